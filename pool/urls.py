from django.urls import path

from pool import views

app_name = "pool"

urlpatterns = [
    path("", views.pool_browse, name="browse"),
    path("images/<int:image_id>/", views.image_detail, name="image_detail"),
    path("images/<int:image_id>/file", views.image_file, name="image_file"),
    path("images/<int:image_id>/thumb", views.image_thumb, name="image_thumb"),
    path("shards/", views.shard_list, name="shards"),
    path("imports/", views.import_list, name="imports"),
    path("imports/start/", views.import_start, name="import_start"),
    path("imports/<int:run_id>/", views.import_detail, name="import_detail"),
    path("imports/<int:run_id>/progress/", views.import_progress, name="import_progress"),
    path("cleaning/", views.cleaning_list, name="cleaning"),
    path("cleaning/start/", views.cleaning_start, name="cleaning_start"),
    path("cleaning/<int:run_id>/", views.cleaning_detail, name="cleaning_detail"),
    path("cleaning/<int:run_id>/progress/", views.cleaning_progress, name="cleaning_progress"),
]
