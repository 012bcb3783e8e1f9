"""Factories for curation tests: real image files, captions and Score rows written directly."""

from __future__ import annotations

import hashlib

import pytest
from django.conf import settings

from pool.models import Caption, Image, text_sha256
from scoring.models import Score
from tests.conftest import image_bytes

ENCODER = "test:encoder"
VERSION = 1


def make_image(
    seed: int, *, status: str = "ok", duplicate_of: Image | None = None, reason: str = ""
) -> Image:
    data = image_bytes(seed=seed)
    sha = hashlib.sha256(data + str(seed).encode()).hexdigest()
    file = f"images/{sha[:2]}/{sha}.jpg"
    path = settings.MEDIA_ROOT / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Image.objects.create(
        sha256=sha,
        phash=f"{seed:016x}",
        width=96,
        height=80,
        format="JPEG",
        bytes=len(data),
        file=file,
        status=status,
        status_reason=reason,
        duplicate_of=duplicate_of,
    )


def make_caption(image: Image, text: str, **fields) -> Caption:
    return Caption.objects.create(image=image, text=text, text_sha256=text_sha256(text), **fields)


def make_score(
    caption: Caption, *, reward=None, cosine=None, criteria=None, truncated=False, **fields
) -> Score:
    return Score.objects.create(
        caption=caption,
        encoder=fields.pop("encoder", ENCODER),
        reward_model_version=fields.pop("reward_model_version", VERSION),
        reward=reward,
        cosine=cosine,
        clipscore=None if cosine is None else 2.5 * max(cosine, 0.0),
        criteria=criteria,
        truncated=truncated,
        **fields,
    )


def make_scored_pool(n: int, *, images: int | None = None) -> list[Caption]:
    """``n`` usable pairs over ``images`` images; reward rises with the index, cosine falls then rises."""
    images = images or n
    pool_images = [make_image(seed) for seed in range(images)]
    captions = [
        Caption(
            image=pool_images[i % images],
            text=f"pair {i} caption",
            text_sha256=text_sha256(f"pair {i} caption"),
        )
        for i in range(n)
    ]
    Caption.objects.bulk_create(captions)
    captions = list(Caption.objects.order_by("id"))[-n:]
    Score.objects.bulk_create(
        [
            Score(
                caption=c,
                encoder=ENCODER,
                reward_model_version=VERSION,
                reward=float(i),
                cosine=0.1 + 0.3 * ((i * 7) % n) / n,
                clipscore=2.5 * (0.1 + 0.3 * ((i * 7) % n) / n),
                criteria={"accuracy": 1 + 4 * i / max(n - 1, 1), "completeness": 3.0},
            )
            for i, c in enumerate(captions)
        ]
    )
    return captions


@pytest.fixture
def scored_pool(db):
    return make_scored_pool(20, images=10)
