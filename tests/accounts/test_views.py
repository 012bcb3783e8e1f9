from __future__ import annotations

import re

import pytest

from accounts.models import ApiToken
from accounts.services import api_token_create, api_token_user
from tests.conftest import make_user

pytestmark = [pytest.mark.django_db]


def test_token_page_needs_login(client):
    response = client.get("/accounts/tokens/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_user_creates_a_token_and_sees_it_once(client):
    user = make_user("anna", "annotator")
    client.force_login(user)
    response = client.post("/accounts/tokens/new/", {"name": "my script"})
    assert response.status_code == 200
    raw = re.search(rb"(loupe_[A-Za-z0-9_\-]+)</code>", response.content).group(1).decode()
    assert api_token_user(raw=raw) == user
    listing = client.get("/accounts/tokens/")
    assert raw.encode() not in listing.content
    assert raw[:12].encode() in listing.content and b"my script" in listing.content


def test_user_revokes_own_token(client):
    user = make_user("anna", "annotator")
    token, raw = api_token_create(user=user)
    client.force_login(user)
    response = client.post(f"/accounts/tokens/{token.pk}/revoke/")
    assert response.status_code == 302
    assert api_token_user(raw=raw) is None


def test_user_cannot_revoke_or_see_someone_elses_token(client):
    other_token, raw = api_token_create(user=make_user("bob", "annotator"), name="bobs secret label")
    client.force_login(make_user("anna", "annotator"))
    assert client.post(f"/accounts/tokens/{other_token.pk}/revoke/").status_code == 404
    assert api_token_user(raw=raw) is not None
    assert b"bobs secret label" not in client.get("/accounts/tokens/").content
    assert ApiToken.objects.get(pk=other_token.pk).revoked_at is None
