from __future__ import annotations

from django.urls import path

from curate import review_views as views

app_name = "review"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("bulk", views.bulk, name="bulk"),
    path("audit", views.audit, name="audit"),
    path("<int:caption_id>/decide", views.decide, name="decide"),
    path("<int:caption_id>/undo", views.undo, name="undo"),
    path("clusters/<int:image_id>/decide", views.cluster_decide_view, name="cluster_decide"),
    path("clusters/<int:image_id>/undo", views.cluster_undo_view, name="cluster_undo"),
    path("<int:caption_id>/suggest", views.suggest, name="suggest"),
    path("<int:caption_id>/suggestion", views.suggestion, name="suggestion"),
]
