"""The scoring management commands."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from pool.models import Caption, CaptionStatus
from scoring.models import Score, ScoringRun
from tests.conftest import image_bytes
from tests.scoring.conftest import make_pool, pool_caption, pool_image

pytestmark = pytest.mark.django_db


def test_score_pool_sync_scores_the_pool(tiny_clip_name):
    make_pool(3)
    out = io.StringIO()
    call_command(
        "score_pool",
        "--encoder",
        tiny_clip_name,
        "--chunk-size",
        "4",
        "--sync",
        stdout=out,
        stderr=io.StringIO(),
    )
    assert "succeeded: 6/6 pairs, 0 unscorable, 2/2 chunks" in out.getvalue()
    assert Score.objects.count() == 6


def test_score_pool_with_unreadable_weights_fails_before_creating_a_run(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(CommandError, match="could not load weights"):
        call_command("score_pool", "--encoder", f"open_clip:ViT-B-32:{bad}", "--sync")
    assert not ScoringRun.objects.exists()


def test_dedupe_captions_marks_the_later_near_identical_caption():
    image = pool_image(image_bytes(seed=1))
    first = pool_caption(image, "A dog running on the beach.")
    second = pool_caption(image, "a dog running on the beach")
    other = pool_caption(image, "A red rocket on a launch pad")
    lone = pool_caption(pool_image(image_bytes(seed=2)), "a dog running on the beach")
    out = io.StringIO()
    call_command("dedupe_captions", stdout=out)
    statuses = dict(Caption.objects.values_list("id", "status"))
    assert statuses[second.id] == CaptionStatus.DUPLICATE
    assert statuses[first.id] == statuses[other.id] == statuses[lone.id] == CaptionStatus.OK
    reason = Caption.objects.get(pk=second.id).status_reason
    assert reason.startswith(f"near-identical to caption {first.id} (cos ")
    assert "1 captions marked duplicate" in out.getvalue()


def test_dedupe_captions_dry_run_changes_nothing():
    image = pool_image(image_bytes(seed=1))
    pool_caption(image, "A cat on a sofa.")
    pool_caption(image, "a cat on a sofa")
    call_command("dedupe_captions", "--dry-run", stdout=io.StringIO())
    assert not Caption.objects.exclude(status=CaptionStatus.OK).exists()


def test_score_pool_without_a_worker_says_so_instead_of_waiting(tiny_clip_name):
    import time

    make_pool(1)
    started = time.monotonic()
    with pytest.raises(CommandError, match="No Celery worker answered within 2 s: none is running.*--sync"):
        call_command("score_pool", "--encoder", tiny_clip_name, stdout=io.StringIO())
    assert time.monotonic() - started < 30
    assert not ScoringRun.objects.exists()


def test_score_pool_no_wait_queues_the_run_and_warns_that_no_worker_runs(
    tiny_clip_name, django_capture_on_commit_callbacks
):
    make_pool(1)
    err = io.StringIO()
    with django_capture_on_commit_callbacks(execute=False):
        call_command("score_pool", "--encoder", tiny_clip_name, "--no-wait", stdout=io.StringIO(), stderr=err)
    assert "No Celery worker answered" in err.getvalue() and "queued" in err.getvalue()
    assert ScoringRun.objects.count() == 1
