"""Pool, score and flag listings: filters and bounded pagination."""

from __future__ import annotations

import pytest

from curate.models import Flag
from scoring.models import Score

pytestmark = pytest.mark.django_db


def test_images_are_paginated_with_next_offset(api_client, pool_rows):
    tc, _ = api_client("curator")
    first = tc.get("/api/images?limit=2").json()
    assert [i["id"] for i in first["items"]] == [pool_rows[0][0].pk, pool_rows[0][1].pk]
    assert first["next_offset"] == 2
    last = tc.get("/api/images?limit=2&offset=4").json()
    assert len(last["items"]) == 1 and last["next_offset"] is None


def test_page_size_is_capped(api_client, pool_rows):
    tc, _ = api_client("curator")
    assert tc.get("/api/images?limit=501").status_code == 422
    assert tc.get("/api/images?limit=0").status_code == 422


def test_image_detail_includes_captions(api_client, pool_rows):
    tc, _ = api_client("curator")
    image = pool_rows[0][0]
    body = tc.get(f"/api/images/{image.pk}").json()
    assert body["url"] == image.url
    assert [c["text"] for c in body["captions"]] == [f"caption {image.pk} 0", f"caption {image.pk} 1"]


def test_missing_image_is_404_and_huge_id_is_422(api_client):
    tc, _ = api_client("curator")
    assert tc.get("/api/images/999999").status_code == 404
    assert tc.get(f"/api/images/{2**70}").status_code == 422


def test_captions_filter_by_text_and_image(api_client, pool_rows):
    tc, _ = api_client("curator")
    image = pool_rows[0][2]
    body = tc.get(f"/api/captions?image_id={image.pk}&q={image.pk}%201").json()
    assert [c["text"] for c in body["items"]] == [f"caption {image.pk} 1"]


def test_control_characters_in_filters_are_422(api_client, pool_rows):
    tc, _ = api_client("curator")
    assert tc.get("/api/captions?q=a%00b").status_code == 422


def test_scores_order_best_first_with_nulls_last(api_client, pool_rows):
    _, captions = pool_rows
    for caption, reward in zip(captions[:3], [0.1, None, 0.9], strict=True):
        Score.objects.create(caption=caption, encoder="enc", reward_model_version=1, reward=reward)
    tc, _ = api_client("curator")
    body = tc.get("/api/scores?order=-reward&encoder=enc").json()
    assert [s["reward"] for s in body["items"]] == [0.9, 0.1, None]
    assert body["items"][0]["text"] == captions[2].text
    assert tc.get("/api/scores?min_reward=0.5").json()["items"][0]["caption_id"] == captions[2].pk
    assert tc.get("/api/scores?order=drop table").status_code == 400


def test_flags_filter_open(api_client, pool_rows):
    _, captions = pool_rows
    Flag.objects.create(caption=captions[0], reason="low_reward")
    Flag.objects.create(caption=captions[1], reason="low_reward", is_open=False)
    tc, _ = api_client("curator")
    body = tc.get("/api/flags?is_open=true").json()
    assert [f["caption_id"] for f in body["items"]] == [captions[0].pk]


# --- the source's identity ---


@pytest.fixture
def indexed(tmp_path, db):
    from pool.importing import pool_import
    from tests.conftest import image_bytes
    from tests.pool.conftest import i2d_row, write_i2d_webdataset

    rows = [i2d_row(f"{i:09d}", f"{i:032x}", f"caption {i}", extra=f"tag{i % 2}") for i in range(4)]
    write_i2d_webdataset(tmp_path, "00000", rows, {r["key"]: image_bytes(seed=i) for i, r in enumerate(rows)})
    return pool_import(source=str(tmp_path))


def test_captions_carry_the_source_uid_key_url_and_metadata(api_client, indexed):
    tc, _ = api_client("curator")
    (caption,) = tc.get(f"/api/captions?uid={2:032x}").json()["items"]
    assert caption["uid"] == f"{2:032x}" and caption["uid_source"] == "source"
    assert caption["key"] == "000000002" and caption["url"] == "http://example.test/000000002.jpg"
    assert caption["meta"]["extra"] == "tag0" and caption["meta"]["original_height"] == 160


def test_captions_and_images_filter_by_key_url_and_metadata(api_client, indexed):
    tc, _ = api_client("curator")
    assert [c["key"] for c in tc.get("/api/captions?meta=extra=tag1").json()["items"]] == [
        "000000001",
        "000000003",
    ]
    assert len(tc.get("/api/captions?url=http://example.test/000000003.jpg").json()["items"]) == 1
    images = tc.get("/api/images?key=000000001").json()["items"]
    assert len(images) == 1 and images[0]["shard"].endswith("00000.tar")
    assert set(images[0]["location"]) == {"offset", "length"}
    assert tc.get("/api/captions?meta=no-equals-sign").status_code == 400


def test_image_url_reads_the_bytes_in_place(api_client, indexed):
    from django.test import Client

    from tests.conftest import image_bytes, make_user

    tc, _ = api_client("curator")
    image = tc.get("/api/images?key=000000001").json()["items"][0]
    browser = Client()
    browser.force_login(make_user("viewer", "curator"))
    assert browser.get(image["url"]).content == image_bytes(seed=1)


def test_shards_are_listed_with_their_status(api_client, indexed):
    tc, _ = api_client("curator")
    (shard,) = tc.get("/api/shards?status=indexed").json()["items"]
    assert shard["samples"] == 4 and shard["fingerprint"]["shard"]["size"] > 0


def test_an_import_run_says_its_outcome_and_problems(api_client, indexed):
    tc, _ = api_client("admin")
    run = tc.get(f"/api/imports/{indexed.pk}").json()
    assert run["outcome"] == "succeeded" and run["problems"] == []
