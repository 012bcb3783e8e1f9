from django.urls import path  # noqa: F401

from pool import views  # noqa: F401

app_name = "pool"

urlpatterns: list = []
