from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AccountsConfig(AppConfig):
    default = True
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"
    verbose_name = "Accounts: API tokens and login limits"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model

        from accounts.usernames import username_normalize

        # Django's ``normalize_username`` (NFKC only) is what ``create_user``, ``create_superuser`` and
        # the admin's model validation call: stripping there too means no account can be stored as
        # " curator" next to "curator" (the login form strips before authenticating, so such an
        # account could never log in, and another's login would be counted against it).
        user_model = get_user_model()
        user_model.normalize_username = classmethod(lambda cls, username: username_normalize(username))


class LoupeAdminConfig(admin_apps.AdminConfig):
    """Django's admin with Loupe's site: opened by the admin role (accounts/admin_site.py)."""

    default = False  # named in INSTALLED_APPS; AccountsConfig stays this module's default
    default_site = "accounts.admin_site.LoupeAdminSite"
