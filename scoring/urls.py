from django.urls import path

from scoring import views

app_name = "scoring"

urlpatterns = [
    path("", views.scoring_home, name="home"),
    path("runs/start/", views.scoring_run_create, name="run_start"),
    path("runs/<int:run_id>/", views.scoring_run_detail, name="run_detail"),
    path("runs/<int:run_id>/progress/", views.scoring_run_progress, name="run_progress"),
    path("runs/<int:run_id>/cancel/", views.scoring_run_cancel, name="run_cancel"),
    path("runs/<int:run_id>/resume/", views.scoring_run_resume, name="run_resume"),
]
