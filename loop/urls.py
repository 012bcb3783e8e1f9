from __future__ import annotations

from django.urls import path

from loop import console_views as views

app_name = "console"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("loop/start/", views.loop_start_view, name="loop_start"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<str:kind>/<int:run_id>/", views.job_detail, name="job_detail"),
    path("jobs/<str:kind>/<int:run_id>/progress/", views.job_progress, name="job_progress"),
    path("jobs/<str:kind>/<int:run_id>/cancel/", views.job_cancel_view, name="job_cancel"),
    path("jobs/<str:kind>/<int:run_id>/retry/", views.job_retry_view, name="job_retry"),
]
