"""API tokens and login failure counting."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Min
from django.utils import timezone

from accounts.models import ApiToken, LoginFailure

TOKEN_PREFIX = "loupe_"
# Writing last_used_at on every request would turn each API read into a write; once a minute is enough
# to tell a live token from a forgotten one.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def api_token_create(*, user: AbstractBaseUser, name: str = "") -> tuple[ApiToken, str]:
    """Creates a token and returns it with its raw value, which is never stored or shown again."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name[:100], key_hash=_hash(raw), prefix=raw[:12])
    return token, raw


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def api_token_user(*, raw: str) -> AbstractBaseUser | None:
    """The active user a raw token belongs to, or None for an unknown, revoked or inactive one."""
    if not raw or not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=_hash(raw), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def login_failure_record(*, username: str, ip: str) -> None:
    now = timezone.now()
    window = timedelta(seconds=settings.LOUPE_LOGIN_WINDOW_SECONDS)
    LoginFailure.objects.create(username=username[:150], ip=ip[:64], created_at=now)
    # Keeps the table as small as the window; cheap thanks to the created_at index.
    LoginFailure.objects.filter(created_at__lt=now - window).delete()


def login_failures_clear(*, username: str, ip: str) -> None:
    LoginFailure.objects.filter(username=username[:150], ip=ip[:64]).delete()


def login_lockout_seconds(*, username: str, ip: str) -> int:
    """Seconds until this username may try again from this address; 0 when it may try now."""
    now = timezone.now()
    window = timedelta(seconds=settings.LOUPE_LOGIN_WINDOW_SECONDS)
    recent = LoginFailure.objects.filter(ip=ip[:64], created_at__gte=now - window)
    per_pair = recent.filter(username=username[:150])
    for rows, limit in (
        (per_pair, settings.LOUPE_LOGIN_MAX_FAILURES),
        (recent, settings.LOUPE_LOGIN_MAX_FAILURES_PER_IP),
    ):
        if rows.count() >= limit:
            oldest = rows.aggregate(first=Min("created_at"))["first"]
            return max(1, int((oldest + window - now).total_seconds()))
    return 0
