"""Login rate limiting: N failures for one username from one address lock that pair out with 429."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import LoginFailure
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def limits(settings):
    settings.LOUPE_LOGIN_MAX_FAILURES = 3
    settings.LOUPE_LOGIN_MAX_FAILURES_PER_IP = 10
    settings.LOUPE_LOGIN_WINDOW_SECONDS = 600
    return settings


def _login(client, username, password, ip="10.0.0.1"):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_failures_over_the_limit_get_429_with_a_message(client, limits):
    make_user("ada", "admin", password="right-password")
    for _ in range(3):
        assert _login(client, "ada", "wrong").status_code == 200
    locked = _login(client, "ada", "right-password")
    assert locked.status_code == 429
    assert b"Too many failed logins" in locked.content
    assert int(locked["Retry-After"]) > 0
    assert not locked.wsgi_request.user.is_authenticated


def test_lockout_is_per_address(client, limits):
    make_user("ada", "admin", password="right-password")
    for _ in range(3):
        _login(client, "ada", "wrong", ip="10.0.0.1")
    assert _login(client, "ada", "right-password", ip="10.0.0.2").status_code == 302


def test_success_clears_earlier_failures(client, limits):
    make_user("ada", "admin", password="right-password")
    for _ in range(2):
        _login(client, "ada", "wrong")
    assert _login(client, "ada", "right-password").status_code == 302
    assert not LoginFailure.objects.filter(username="ada").exists()


def test_password_spraying_from_one_address_is_limited(client, limits):
    for i in range(10):
        _login(client, f"user{i}", "guess")
    assert _login(client, "someone-else", "guess").status_code == 429


def test_lockout_ends_when_the_window_passes(client, limits):
    make_user("ada", "admin", password="right-password")
    for _ in range(3):
        _login(client, "ada", "wrong")
    limits.LOUPE_LOGIN_WINDOW_SECONDS = 0
    assert _login(client, "ada", "right-password").status_code == 302


def test_admin_login_is_limited_too(client, limits):
    for _ in range(3):
        client.post("/admin/login/", {"username": "ada", "password": "wrong"}, REMOTE_ADDR="10.0.0.9")
    response = client.post("/admin/login/", {"username": "ada", "password": "x"}, REMOTE_ADDR="10.0.0.9")
    assert response.status_code == 429


VARIANTS = [" ada", "ada ", "ada\t", "\tada", "ａｄａ", "ada\u00a0", "\u3000ada", "ADA"]


def test_spellings_that_log_in_as_one_user_share_its_failure_allowance(client, limits):
    make_user("ada", "admin", password="right-password")
    # Each of these is the account "ada" to the login form (it strips and applies NFKC).
    assert _login(client, "ａｄａ ", "right-password").status_code == 302
    client.logout()
    statuses = [_login(client, variant, "wrong").status_code for variant in VARIANTS]
    # Three failures lock the pair, whatever the spelling: the rest are refused before authenticating.
    assert statuses == [200, 200, 200] + [429] * (len(VARIANTS) - 3)
    assert _login(client, "ada", "right-password").status_code == 429


def test_admin_login_counts_spellings_as_one_user_too(client, limits):
    make_user("ada", "admin", password="right-password")
    for variant in VARIANTS[:3]:
        client.post(reverse("admin:login"), {"username": variant, "password": "x"}, REMOTE_ADDR="10.0.0.1")
    assert _login(client, " ada ", "right-password").status_code == 429
