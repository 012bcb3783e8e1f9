"""The project's URLs plus the token page, for tests until config/urls.py mounts ``accounts.urls``."""

from django.urls import include, path

from config.urls import urlpatterns as project_urlpatterns

urlpatterns = [
    path("accounts/", include("accounts.urls")),
    *[p for p in project_urlpatterns if "accounts" not in str(getattr(p, "pattern", ""))],
]
