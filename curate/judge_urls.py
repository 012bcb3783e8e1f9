from __future__ import annotations

from django.urls import path

from curate import judge_views as views

app_name = "judge"

urlpatterns = [
    path("", views.index, name="index"),
    path("runs", views.judge_run_create, name="run_create"),
    path("rewrites", views.rewrite_run_create, name="rewrite_create"),
]
