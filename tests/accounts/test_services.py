from __future__ import annotations

import pytest

from accounts.models import ApiToken
from accounts.services import api_token_create, api_token_revoke, api_token_user
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def test_token_is_stored_hashed_and_resolves_to_its_user():
    user = make_user("anna", "annotator")
    token, raw = api_token_create(user=user, name="script")
    assert raw.startswith("loupe_") and len(raw) > 40
    assert raw not in token.key_hash and token.prefix == raw[:12]
    assert api_token_user(raw=raw) == user
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_revoked_token_is_refused():
    user = make_user("anna", "annotator")
    token, raw = api_token_create(user=user)
    api_token_revoke(token=token)
    assert api_token_user(raw=raw) is None


def test_inactive_users_token_is_refused():
    user = make_user("anna", "annotator")
    _, raw = api_token_create(user=user)
    user.is_active = False
    user.save()
    assert api_token_user(raw=raw) is None


@pytest.mark.parametrize("raw", ["", "loupe_", "loupe_unknown", "Bearer x", "loupe_" + "a" * 500])
def test_unknown_tokens_are_refused(raw):
    make_user("anna", "annotator")
    api_token_create(user=make_user("b", "annotator"))
    assert api_token_user(raw=raw) is None


def test_tokens_are_unique():
    user = make_user("anna", "annotator")
    raws = {api_token_create(user=user)[1] for _ in range(20)}
    assert len(raws) == 20 == ApiToken.objects.count()
