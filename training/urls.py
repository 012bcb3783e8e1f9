from django.urls import path

from training import views

app_name = "training"

urlpatterns = [
    path("", views.model_list, name="model_list"),
    path("train/", views.training_start, name="training_start"),
    path("rollback/", views.model_rollback, name="model_rollback"),
    path("runs/<int:pk>/progress/", views.training_run_progress, name="training_run_progress"),
    path("<int:version>/", views.model_detail, name="model_detail"),
    path("<int:version>/promote/", views.model_promote, name="model_promote"),
]
