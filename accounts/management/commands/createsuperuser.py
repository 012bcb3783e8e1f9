"""Django's createsuperuser, checking the name as it will be stored: " ada" is "ada" (see
``accounts.usernames``), so it is refused as taken instead of failing on the unique index."""

from __future__ import annotations

from django.contrib.auth.management.commands.createsuperuser import Command as DjangoCommand

from accounts.usernames import username_normalize


class Command(DjangoCommand):
    def _validate_username(self, username, verbose_field_name, database):
        return super()._validate_username(
            username_normalize(username) if isinstance(username, str) else username,
            verbose_field_name,
            database,
        )
