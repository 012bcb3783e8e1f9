"""Creates an API token for a user and prints it once: ``manage.py create_api_token USER [--name NAME]``."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.services import api_token_create


class Command(BaseCommand):
    help = "Create a REST API token for USER and print it (it is stored hashed and cannot be shown again)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--name", default="", help="A label to tell this token apart, e.g. 'labeling script'."
        )

    def handle(self, *args, username: str, name: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(
                f"No user named {username!r}. Create it first (manage.py createsuperuser or admin)."
            )
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive; its tokens would be refused.")
        _, raw = api_token_create(user=user, name=name)
        self.stdout.write(raw)
