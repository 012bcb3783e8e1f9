from django.apps import AppConfig


class AccountsConfig(AppConfig):
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
