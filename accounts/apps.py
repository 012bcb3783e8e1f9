from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AccountsConfig(AppConfig):
    default = True
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"
    verbose_name = "Accounts: API tokens and login limits"


class LoupeAdminConfig(admin_apps.AdminConfig):
    """Django's admin with Loupe's site: opened by the admin role (accounts/admin_site.py)."""

    default = False  # named in INSTALLED_APPS; AccountsConfig stays this module's default
    default_site = "accounts.admin_site.LoupeAdminSite"
