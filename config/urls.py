from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from config import views
from config.api import api

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("pool/", include("pool.urls")),
    path("annotate/", include("annotate.urls")),
    path("scoring/", include("scoring.urls")),
    path("curate/review/", include("curate.review_urls")),
    path("curate/filters/", include("curate.filter_urls")),
    path("curate/judge/", include("curate.judge_urls")),
    # Where curation lived before it had its own app: old bookmarks keep working.
    re_path(
        r"^annotate/review/(?P<rest>.*)$",
        RedirectView.as_view(url="/curate/review/%(rest)s", query_string=True),
    ),
    re_path(
        r"^scoring/filters/(?P<rest>.*)$",
        RedirectView.as_view(url="/curate/filters/%(rest)s", query_string=True),
    ),
    path("models/", include("training.urls")),
    path("console/", include("loop.urls")),
    path("accounts/", include("accounts.urls")),
    path("api/", api.urls),
    path("admin/", admin.site.urls),
    # Media behind login: pool images are not public. Production serves them the same way (or via
    # X-Accel-Redirect in front of it), never as an open static folder.
    path("media/<path:path>", views.media, name="media"),
]
