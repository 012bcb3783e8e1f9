from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.services import api_token_user
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def test_create_api_token_prints_a_working_token():
    user = make_user("anna", "annotator")
    out = StringIO()
    call_command("create_api_token", "anna", "--name", "labeling script", stdout=out)
    raw = out.getvalue().strip()
    assert api_token_user(raw=raw) == user
    assert user.api_tokens.get().name == "labeling script"


def test_create_api_token_for_unknown_user_says_so():
    with pytest.raises(CommandError, match="No user named 'ghost'"):
        call_command("create_api_token", "ghost")


def test_users_are_stored_under_the_name_the_login_form_authenticates():
    from django.contrib.auth.models import User

    assert User.objects.create_user(username=" ｃｕｒａｔｏｒ\t").username == "curator"


def test_createsuperuser_refuses_a_spelling_of_an_existing_name():
    make_user("ada", "admin")
    with pytest.raises(CommandError, match="already taken"):
        call_command("createsuperuser", "--noinput", "--username", "ａｄａ", "--email", "a@example.org")


def test_createsuperuser_stores_the_normalised_name():
    from django.contrib.auth.models import User

    call_command(
        "createsuperuser",
        "--noinput",
        "--username",
        "ｒｏｏｔ",
        "--email",
        "r@example.org",
        stdout=StringIO(),
    )
    assert User.objects.filter(username="root", is_superuser=True).exists()
