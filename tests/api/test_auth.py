"""Who may call the API: token or session, with the pages' roles."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.services import api_token_create, api_token_revoke
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def test_openapi_schema_and_docs_are_served(client):
    schema = client.get("/api/openapi.json")
    assert schema.status_code == 200
    assert "/api/judgments" in schema.json()["paths"]
    docs = client.get("/api/docs")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower()  # bundled Swagger UI, the CSP allows only 'self'


def test_anonymous_gets_401(client):
    assert client.get("/api/me").status_code == 401


def test_token_authenticates_as_its_user(api_client):
    tc, user = api_client("curator")
    assert tc.get("/api/me").json() == {"username": user.username, "role": "curator"}


def test_revoked_token_gets_401():
    token, raw = api_token_create(user=make_user("anna", "annotator"))
    api_token_revoke(token=token)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/me").status_code == 401


def test_wrong_role_gets_403_naming_the_role(api_client):
    tc, _ = api_client("annotator")
    response = tc.get("/api/images")
    assert response.status_code == 403
    assert response.json()["detail"] == "This needs the curator role."


def test_user_without_role_gets_403_everywhere(api_client):
    tc, _ = api_client(None)
    assert tc.get("/api/campaigns").status_code == 403


def test_session_auth_works_for_reads():
    client = Client()
    client.force_login(make_user("carl", "curator"))
    assert client.get("/api/images").status_code == 200


def test_session_post_without_csrf_token_is_refused():
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("ada", "admin"))
    response = client.post("/api/scoring-runs", data={}, content_type="application/json")
    assert response.status_code == 403


def test_token_post_needs_no_csrf_token(api_client):
    tc, _ = api_client("annotator")
    tc.enforce_csrf_checks = True
    response = tc.post("/api/judgments", data={}, content_type="application/json")
    # Refused for its body (422), not for CSRF (403).
    assert response.status_code == 422
