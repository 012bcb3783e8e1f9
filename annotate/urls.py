from django.urls import path

from annotate import views

app_name = "annotate"

urlpatterns = [
    path("", views.campaign_list, name="campaigns"),
    path("new", views.campaign_new, name="campaign_new"),
    path("<int:campaign_id>/", views.campaign_detail, name="campaign"),
    path("<int:campaign_id>/build", views.campaign_build, name="campaign_build"),
    path("<int:campaign_id>/export/<str:fmt>", views.campaign_export, name="campaign_export"),
    path("<int:campaign_id>/next", views.task_next, name="next"),
    path("<int:campaign_id>/progress", views.progress, name="progress"),
    path("<int:campaign_id>/tasks/<int:task_id>/submit", views.task_submit, name="submit"),
    path("<int:campaign_id>/tasks/<int:task_id>/skip", views.task_skip, name="skip"),
    path("<int:campaign_id>/tasks/<int:task_id>/state", views.task_state, name="task_state"),
    path("<int:campaign_id>/judgments/<int:judgment_id>/revise", views.judgment_revise, name="revise"),
]
