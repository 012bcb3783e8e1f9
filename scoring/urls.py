from django.urls import path  # noqa: F401

from scoring import views  # noqa: F401

app_name = "scoring"

urlpatterns: list = []
