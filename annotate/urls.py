from django.urls import path  # noqa: F401

from annotate import views  # noqa: F401

app_name = "annotate"

urlpatterns: list = []
