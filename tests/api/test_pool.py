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
