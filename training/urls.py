from django.urls import path  # noqa: F401

from training import views  # noqa: F401

app_name = "training"

urlpatterns: list = []
