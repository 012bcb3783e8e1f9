"""API fixtures: a token client per role and a few pool rows."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.services import api_token_create
from pool.models import Caption, Image
from tests.conftest import make_user


class TokenClient(Client):
    """A test client that sends ``Authorization: Bearer <token>`` on every request."""

    def __init__(self, raw: str, **kwargs):
        super().__init__(HTTP_AUTHORIZATION=f"Bearer {raw}", **kwargs)


@pytest.fixture
def api_client(db):
    """``api_client(role)`` -> (client with a fresh token for a new user of that role, user)."""
    counter = {"n": 0}

    def make(role: str | None, username: str | None = None):
        counter["n"] += 1
        user = make_user(username or f"{role or 'nobody'}{counter['n']}", role)
        _, raw = api_token_create(user=user)
        return TokenClient(raw), user

    return make


def make_image(n: int, **fields) -> Image:
    defaults = dict(sha256=f"{n:064x}", width=96, height=80, file=f"images/{n}.jpg", source="test")
    defaults.update(fields)
    return Image.objects.create(**defaults)


def make_caption(image: Image, text: str, **fields) -> Caption:
    from pool.models import text_sha256

    return Caption.objects.create(image=image, text=text, text_sha256=text_sha256(text), **fields)


@pytest.fixture
def pool_rows(db):
    images = [make_image(i) for i in range(1, 6)]
    captions = [make_caption(image, f"caption {image.pk} {j}") for image in images for j in range(2)]
    return images, captions
