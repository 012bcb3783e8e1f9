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
