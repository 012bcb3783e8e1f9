"""Fixtures of the scoring tests: a tiny open_clip encoder on disk and a few pool rows with real files."""

from __future__ import annotations

import hashlib

import pytest
from django.conf import settings

from pool.models import Caption, Image, text_sha256
from tests.conftest import image_bytes
from tests.scoring.tiny_clip import tiny_clip_encoder_name


@pytest.fixture(scope="session")
def tiny_clip_name(tmp_path_factory) -> str:
    return tiny_clip_encoder_name(tmp_path_factory.mktemp("tiny-clip"))


def pool_image(data: bytes, *, suffix: str = "jpg") -> Image:
    """An Image row whose file under MEDIA_ROOT holds ``data`` (content-addressed like the importer)."""
    sha = hashlib.sha256(data).hexdigest()
    rel = f"images/{sha[:2]}/{sha}.{suffix}"
    path = settings.MEDIA_ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Image.objects.create(sha256=sha, width=64, height=48, file=rel, format="JPEG", bytes=len(data))


def pool_caption(image: Image, text: str) -> Caption:
    return Caption.objects.create(image=image, text=text, text_sha256=text_sha256(text))


def make_pool(n_images: int, captions_per_image: int = 2, *, size=(64, 48)) -> list[Caption]:
    captions = []
    for i in range(n_images):
        image = pool_image(image_bytes(*size, seed=i))
        for j in range(captions_per_image):
            captions.append(pool_caption(image, f"picture {i} caption {j}"))
    return captions
