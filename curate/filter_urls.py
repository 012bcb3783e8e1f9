from __future__ import annotations

from django.urls import path

from curate import downstream_views
from curate import filter_views as views

app_name = "filters"

urlpatterns = [
    path("", views.index, name="index"),
    path("preview", views.preview, name="preview"),
    path("runs", views.run_create, name="run_create"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/progress", views.run_progress, name="run_progress"),
    path("runs/<int:run_id>/export", views.export_start, name="export_start"),
    path("runs/<int:run_id>/downstream", downstream_views.downstream_start, name="downstream_start"),
    path("exports/<int:export_id>/progress", views.export_progress, name="export_progress"),
    path("exports/<int:export_id>/files/<str:name>", views.export_download, name="export_download"),
]
