"""Small builders of pool and annotation rows for the annotate tests."""

from __future__ import annotations

import hashlib
import itertools

from django.conf import settings

from annotate import services
from annotate.models import Campaign
from pool.models import Caption, Image, text_sha256
from tests.conftest import image_bytes

_counter = itertools.count(1)

CAPTION_TEXTS = [
    "A brown dog runs across a sunny meadow",
    "A dog",
    "A cat sleeping on a red sofa",
    "Photo of a small animal outdoors in the grass, running towards the camera",
    "Unrelated text about stock prices",
    "A puppy playing fetch",
]


def image_create(*, seed: int | None = None, source: str = "tests", status: str = "ok") -> Image:
    seed = next(_counter) if seed is None else seed
    data = image_bytes(width=160, height=120, seed=seed)
    digest = hashlib.sha256(data).hexdigest()
    rel = f"images/{digest[:2]}/{digest}.jpg"
    path = settings.MEDIA_ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Image.objects.create(
        sha256=digest,
        width=160,
        height=120,
        format="JPEG",
        bytes=len(data),
        file=rel,
        source=source,
        status=status,
    )


def caption_create(
    *, image: Image, text: str, source: str = "alt", status: str = "ok", parent=None
) -> Caption:
    return Caption.objects.create(
        image=image, text=text, text_sha256=text_sha256(text), source=source, status=status, parent=parent
    )


def pool_create(*, images: int = 3, captions_per_image: int = 4, source: str = "tests") -> list[Image]:
    made = []
    for _ in range(images):
        image = image_create(source=source)
        for k in range(captions_per_image):
            caption_create(
                image=image, text=f"{CAPTION_TEXTS[k % len(CAPTION_TEXTS)]} (image {image.pk}, {k})"
            )
        made.append(image)
    return made


def campaign_with_tasks(
    *, name: str = "Campaign", images: int = 3, captions_per_image: int = 4, **kwargs
) -> Campaign:
    kwargs.setdefault("gold_rate", 0.0)
    pool_create(images=images, captions_per_image=captions_per_image)
    campaign = services.campaign_create(name=name, **kwargs)
    services.campaign_tasks_build(campaign=campaign)
    return campaign


def answer_for(task, *, criteria=None, rating: int = 3, tie_first_two: bool = False) -> tuple[list, dict]:
    """A valid ranking (in build order) and ratings for a task."""
    ids = services.task_caption_ids(task)
    ranking = [[cid] for cid in ids]
    if tie_first_two:
        ranking = [ids[:2]] + [[cid] for cid in ids[2:]]
    keys = [c["key"] for c in (criteria or task.campaign.criteria)]
    ratings = {str(cid): {k: rating for k in keys} for cid in ids}
    return ranking, ratings
