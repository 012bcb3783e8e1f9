"""Scoring screens: curators see runs and score histograms; only admins start, cancel or resume."""

from __future__ import annotations

import pytest
from django.urls import reverse

from pool.models import RunStatus
from scoring.inference import scoring_run_sync
from scoring.models import ScoringRun
from scoring.services import scoring_run_start
from tests.scoring.conftest import make_pool

pytestmark = pytest.mark.django_db


def test_curator_sees_runs_progress_and_the_clipscore_histogram(client, curator, tiny_clip_name):
    make_pool(3)
    run = scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    client.force_login(curator)
    response = client.get(reverse("scoring:home"))
    body = response.content.decode()
    assert response.status_code == 200
    assert reverse("scoring:run_detail", args=[run.pk]) in body
    assert '<svg class="chart"' in body and "6 scored pairs" in body
    assert "Start scoring run" not in body  # the form is for admins


def test_annotator_cannot_see_scoring(client, annotator):
    client.force_login(annotator)
    assert client.get(reverse("scoring:home")).status_code == 403


def test_progress_partial_polls_while_the_run_is_unfinished(client, curator, tiny_clip_name):
    run = scoring_run_start(encoder=tiny_clip_name, enqueue=False)
    client.force_login(curator)
    body = client.get(reverse("scoring:run_progress", args=[run.pk])).content.decode()
    assert 'hx-trigger="every 2s"' in body and "<progress" in body


def test_admin_starts_a_run_from_the_form(
    client, admin_user, tiny_clip_name, django_capture_on_commit_callbacks
):
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("scoring:run_start"), {"encoder": tiny_clip_name, "chunk_size": 512})
    run = ScoringRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "scoring:run_detail", args=[run.pk]
    )
    assert (run.encoder, run.chunk_size, run.created_by) == (tiny_clip_name, 512, admin_user)
    assert len(callbacks) == 1  # the planning task, sent once the row is committed


def test_bad_encoder_name_is_shown_on_the_form(client, admin_user):
    client.force_login(admin_user)
    response = client.post(reverse("scoring:run_start"), {"encoder": "clip-large", "chunk_size": 512})
    assert response.status_code == 400
    assert "Unknown encoder" in response.content.decode()
    assert not ScoringRun.objects.exists()


def test_curator_cannot_start_or_cancel(client, curator, tiny_clip_name):
    run = scoring_run_start(encoder=tiny_clip_name, enqueue=False)
    client.force_login(curator)
    assert client.post(reverse("scoring:run_start"), {"chunk_size": 512}).status_code == 403
    assert client.post(reverse("scoring:run_cancel", args=[run.pk])).status_code == 403


def test_admin_cancels_a_run(client, admin_user, tiny_clip_name):
    run = scoring_run_start(encoder=tiny_clip_name, enqueue=False)
    client.force_login(admin_user)
    response = client.post(reverse("scoring:run_cancel", args=[run.pk]), follow=True)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert "cancelled" in response.content.decode()


def test_cancel_needs_post(client, admin_user, tiny_clip_name):
    run = scoring_run_start(encoder=tiny_clip_name, enqueue=False)
    client.force_login(admin_user)
    assert client.get(reverse("scoring:run_cancel", args=[run.pk])).status_code == 405


def test_run_detail_lists_unscorable_pairs(client, curator, tiny_clip_name):
    from tests.scoring.conftest import pool_caption, pool_image

    pool_caption(pool_image(b"\xff\xd8\xff broken"), "a broken picture")
    run = scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    client.force_login(curator)
    body = client.get(reverse("scoring:run_detail", args=[run.pk])).content.decode()
    assert "Unscorable pairs" in body and "cannot read image" in body
