from __future__ import annotations

import json

import pytest

from pool.cleaning_runs import pool_clean
from pool.importing import pool_import
from pool.models import Caption, CaptionStatus, Image, ImageStatus
from tests.conftest import image_bytes
from tests.pool.conftest import write_tar

pytestmark = pytest.mark.django_db


def make_image(*, seed: int, width: int, height: int, phash: str | None = None, **kwargs) -> Image:
    from pool.images import image_inspect

    info = image_inspect(image_bytes(width, height, seed=seed))
    return Image.objects.create(
        sha256=f"{Image.objects.count():06d}{seed:04d}{width:05d}{height:05d}".ljust(64, "0"),
        phash=phash or info.phash,
        width=width,
        height=height,
        format="JPEG",
        file="images/x.jpg",
        **kwargs,
    )


def test_clean_keeps_the_highest_resolution_of_near_duplicates():
    small = make_image(seed=1, width=96, height=80)
    large = make_image(seed=1, width=384, height=320)
    medium = make_image(seed=1, width=192, height=160)
    other = make_image(seed=2, width=96, height=80)
    run = pool_clean(min_side=64)
    for image in (small, large, medium, other):
        image.refresh_from_db()
    assert large.status == ImageStatus.OK and other.status == ImageStatus.OK
    assert (small.status, small.duplicate_of_id) == (ImageStatus.NEAR_DUPLICATE, large.pk)
    assert (medium.status, medium.duplicate_of_id) == (ImageStatus.NEAR_DUPLICATE, large.pk)
    assert "kept as the highest resolution" in small.status_reason
    assert run.summary["near_duplicate_groups"] == 1


def test_clean_marks_same_picture_same_size_as_duplicate():
    first = make_image(seed=3, width=96, height=80)
    second = make_image(seed=3, width=96, height=80, phash=first.phash)
    pool_clean(min_side=64)
    second.refresh_from_db()
    assert (second.status, second.duplicate_of_id) == (ImageStatus.DUPLICATE, first.pk)


def test_clean_marks_low_resolution():
    tiny = make_image(seed=4, width=40, height=200)
    pool_clean(min_side=64)
    tiny.refresh_from_db()
    assert tiny.status == ImageStatus.LOW_RES
    assert "40 px" in tiny.status_reason


def test_clean_never_overrides_a_rejection_and_deletes_nothing():
    rejected = make_image(seed=5, width=40, height=40, status=ImageStatus.REJECTED)
    Caption.objects.create(image=rejected, text="x", text_sha256="a")
    pool_clean(min_side=64)
    rejected.refresh_from_db()
    assert rejected.status == ImageStatus.REJECTED
    assert Image.objects.count() == 1 and Caption.objects.count() == 1


def add_captions(image, *texts):
    from pool.models import text_sha256

    return [Caption.objects.create(image=image, text=t, text_sha256=text_sha256(t)) for t in texts]


def test_clean_marks_trivial_empty_and_duplicate_captions():
    image = make_image(seed=6, width=96, height=80)
    good, empty, short, filename, boiler, digits, dup = add_captions(
        image,
        "A dog runs on the beach.",
        "",
        "ok",
        "IMG_1234.JPG",
        "Untitled",
        "2014-05-01",
        "a dog runs on the beach",
    )
    run = pool_clean(min_side=64)
    statuses = dict(Caption.objects.values_list("pk", "status"))
    assert statuses == {
        good.pk: "ok",
        empty.pk: "empty",
        short.pk: "trivial",
        filename.pk: "trivial",
        boiler.pk: "trivial",
        digits.pk: "trivial",
        dup.pk: "duplicate",
    }
    assert Caption.objects.get(pk=dup.pk).status_reason == f"same text as caption {good.pk} on this image"
    assert run.summary["captions"]["trivial"] == 4


def test_clean_marks_duplicate_captions_across_a_near_duplicate_group():
    small = make_image(seed=8, width=96, height=80)
    large = make_image(seed=8, width=384, height=320)
    (on_small,) = add_captions(small, "A red bicycle")
    (on_large,) = add_captions(large, "a red bicycle!")
    pool_clean(min_side=64)
    on_small.refresh_from_db()
    on_large.refresh_from_db()
    assert on_large.status == CaptionStatus.OK
    assert on_small.status == CaptionStatus.DUPLICATE
    assert f"image {large.pk}" in on_small.status_reason


def test_clean_twice_changes_nothing_the_second_time():
    make_image(seed=1, width=96, height=80)
    make_image(seed=1, width=384, height=320)
    image = make_image(seed=9, width=30, height=30)
    add_captions(image, "untitled", "A cat", "a cat")
    first = pool_clean(min_side=64)
    state = list(Image.objects.order_by("pk").values_list("status", "status_reason", "duplicate_of"))
    second = pool_clean(min_side=64)
    assert list(Image.objects.order_by("pk").values_list("status", "status_reason", "duplicate_of")) == state
    assert first.summary["images_changed"] > 0
    assert (second.summary["images_changed"], second.summary["captions_changed"]) == (0, 0)
    assert second.summary["images"] == first.summary["images"]


def test_clean_restores_ok_when_the_rule_no_longer_applies():
    tiny = make_image(seed=10, width=50, height=50)
    pool_clean(min_side=64)
    pool_clean(min_side=32)
    tiny.refresh_from_db()
    assert (tiny.status, tiny.status_reason) == (ImageStatus.OK, "")


def test_import_then_clean_end_to_end(tmp_path):
    members = [
        ("a.jpg", image_bytes(96, 80, seed=11)),
        ("a.txt", b"a photo"),
        ("b.jpg", image_bytes(384, 320, seed=11)),
        ("b.txt", b"A photo."),
        ("c.jpg", image_bytes(32, 32, seed=12)),
        ("c.txt", json.dumps("x").encode()),
    ]
    pool_import(source=str(write_tar(tmp_path / "s.tar", members)))
    pool_clean(min_side=64)
    assert dict(Image.objects.values_list("source_key", "status")) == {
        "a": "near_duplicate",
        "b": "ok",
        "c": "low_res",
    }
    assert Caption.objects.get(image__source_key="a").status == "duplicate"


def test_rows_update_sets_only_the_given_rows_and_fields():
    from pool.bulk import rows_update

    a = make_image(seed=901, width=80, height=80)
    b = make_image(seed=902, width=80, height=80)
    c = make_image(seed=903, width=80, height=80)
    reason = "près d'une autre, 'quoted' ; -- not SQL"
    rows = [
        {"id": a.pk, "status": ImageStatus.NEAR_DUPLICATE, "status_reason": reason, "duplicate_of_id": c.pk},
        {"id": b.pk, "status": ImageStatus.LOW_RES, "status_reason": "", "duplicate_of_id": None},
    ]
    assert rows_update(Image, rows, ["status", "status_reason", "duplicate_of_id"]) == 2
    assert rows_update(Image, [], ["status"]) == 0
    a.refresh_from_db(), b.refresh_from_db(), c.refresh_from_db()
    assert (a.status, a.status_reason, a.duplicate_of_id, a.width) == (
        ImageStatus.NEAR_DUPLICATE,
        reason,
        c.pk,
        80,
    )
    assert (b.status, b.duplicate_of_id) == (ImageStatus.LOW_RES, None)
    assert c.status == ImageStatus.OK


def test_caption_normalise_ascii_fast_path_matches_the_unicode_rules():
    import random
    import unicodedata

    from pool.cleaning import caption_normalise

    def by_category(text):
        text = unicodedata.normalize("NFKC", text).casefold()
        return " ".join("".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text).split())

    rng = random.Random(0)
    alphabet = [chr(i) for i in range(128)]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert caption_normalise(text) == by_category(text)
