"""Pool scoring with a real Celery worker: completes, and survives a SIGKILLed worker."""

from __future__ import annotations

import os

import pytest
from django.conf import settings
from django.db.models import Count

from pool.models import RunStatus
from scoring.models import Score, ScoringRun
from scoring.services import scoring_run_start
from scoring.tasks import scoring_run_resume
from tests.conftest import image_bytes, wait_for
from tests.scoring.conftest import pool_caption, pool_image
from tests.scoring.tiny_clip import tiny_clip_encoder_name

pytestmark = [pytest.mark.system, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory) -> str:
    return tiny_clip_encoder_name(tmp_path_factory.mktemp("tiny-clip"))


def _pool(n_images: int, captions_per_image: int = 3) -> set[int]:
    ids = set()
    for i in range(n_images):
        image = pool_image(image_bytes(40, 32, seed=i))
        for j in range(captions_per_image):
            ids.add(pool_caption(image, f"image {i}, candidate caption {j}").id)
    return ids


def _worker_env() -> dict:
    # The test's media and cache folders (per test, see tests/conftest.py) must be the worker's too.
    return {
        "LOUPE_MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "LOUPE_EMBEDDING_CACHE_DIR": str(settings.EMBEDDING_CACHE_DIR),
        "LOUPE_MODEL_DIR": str(settings.MODEL_DIR),
        "LOUPE_SCORING_LOADER_WORKERS": "0",
    }


def _run(run_id: int) -> ScoringRun:
    return ScoringRun.objects.get(pk=run_id)


def _assert_one_score_per_pair(run: ScoringRun, caption_ids: set[int]) -> None:
    scores = Score.objects.filter(encoder=run.encoder, reward_model_version=run.reward_model_version)
    assert set(scores.values_list("caption_id", flat=True)) == caption_ids
    assert not scores.values("caption_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    assert scores.filter(error="", clipscore__isnull=False).count() == len(caption_ids)


def test_scoring_run_with_a_real_worker_scores_every_pair_once(tiny_clip_name, celery_worker_process):
    caption_ids = _pool(100)
    worker = celery_worker_process(extra_env=_worker_env())
    run = scoring_run_start(encoder=tiny_clip_name, chunk_size=64)
    done = wait_for(
        lambda: _run(run.pk).is_finished and _run(run.pk),
        timeout=240,
        message=f"scoring run to finish; worker log:\n{worker.log()[-3000:]}",
    )
    assert done.status == RunStatus.SUCCEEDED, done.error
    assert (done.done, done.total, done.chunks_done, done.chunks_total) == (300, 300, 5, 5)
    _assert_one_score_per_pair(done, caption_ids)


def test_killed_worker_mid_run_then_resume_completes_without_duplicates(
    tiny_clip_name, celery_worker_process
):
    caption_ids = _pool(100)
    first = celery_worker_process(extra_env=_worker_env())
    run = scoring_run_start(encoder=tiny_clip_name, chunk_size=4)  # 75 chunks
    wait_for(
        lambda: _run(run.pk).chunks_done >= 3,
        timeout=240,
        interval=0.05,
        message=f"first chunks; worker log:\n{first.log()[-3000:]}",
    )
    first.kill()
    killed_at = _run(run.pk)
    assert killed_at.status == RunStatus.RUNNING and killed_at.chunks_done < killed_at.chunks_total

    second = celery_worker_process(extra_env=_worker_env())
    # The filesystem broker (and Redis until its visibility timeout) does not give a killed worker's
    # message back at once: resume re-enqueues every chunk with no committed scores.
    scoring_run_resume.delay(run.pk)
    done = wait_for(
        lambda: _run(run.pk).is_finished and _run(run.pk),
        timeout=300,
        message=f"run to finish after the kill; worker log:\n{second.log()[-3000:]}",
    )
    assert done.status == RunStatus.SUCCEEDED, done.error
    assert (done.done, done.chunks_done, done.chunks_total) == (300, 75, 75)
    _assert_one_score_per_pair(done, caption_ids)


def test_killed_worker_mid_run_is_resumed_by_the_stale_run_sweep(tiny_clip_name, celery_worker_process):
    import time

    from loop.tasks import runs_stale_recover_task

    caption_ids = _pool(100)
    first = celery_worker_process(extra_env=_worker_env())
    run = scoring_run_start(encoder=tiny_clip_name, chunk_size=4)  # 75 chunks
    wait_for(
        lambda: _run(run.pk).chunks_done >= 3,
        timeout=240,
        interval=0.05,
        message=f"first chunks; worker log:\n{first.log()[-3000:]}",
    )
    first.kill()
    killed_at = _run(run.pk)
    assert killed_at.status == RunStatus.RUNNING and killed_at.heartbeat_at is not None

    # The sweep runs on the default queue, the chunks on the gpu queue: one worker takes both here.
    second = celery_worker_process(extra_env=_worker_env())
    time.sleep(1.5)
    runs_stale_recover_task.delay(older_than_seconds=1)
    done = wait_for(
        lambda: _run(run.pk).is_finished and _run(run.pk),
        timeout=300,
        message=f"run to finish after the sweep; worker log:\n{second.log()[-3000:]}",
    )
    assert done.status == RunStatus.SUCCEEDED, done.error
    assert done.stale_resumes == 1
    assert (done.done, done.chunks_done, done.chunks_total) == (300, 75, 75)
    _assert_one_score_per_pair(done, caption_ids)


@pytest.mark.skipif(
    not os.environ.get("CELERY_BROKER_URL", "").startswith("redis"),
    reason="Redis redelivery: run with LOUPE_TEST_BROKER=redis (scripts/test.sh does)",
)
def test_redis_redelivers_a_killed_workers_chunk_after_the_visibility_timeout(
    tiny_clip_name, celery_worker_process
):
    """No resume and no sweep: the broker itself gives the chunk the killed worker held to another."""
    caption_ids = _pool(40)
    first = celery_worker_process(extra_env=_worker_env())
    run = scoring_run_start(encoder=tiny_clip_name, chunk_size=4)  # 30 chunks
    wait_for(
        lambda: _run(run.pk).chunks_done >= 2,
        timeout=240,
        interval=0.05,
        message=f"first chunks; worker log:\n{first.log()[-3000:]}",
    )
    first.kill()
    assert _run(run.pk).status == RunStatus.RUNNING
    second = celery_worker_process(extra_env=_worker_env())
    timeout = int(settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]) + 180
    done = wait_for(
        lambda: _run(run.pk).is_finished and _run(run.pk),
        timeout=timeout,
        message=f"the redelivered chunk; worker log:\n{second.log()[-3000:]}",
    )
    assert done.status == RunStatus.SUCCEEDED, done.error
    assert done.stale_resumes == 0 and (done.chunks_done, done.chunks_total) == (30, 30)
    _assert_one_score_per_pair(done, caption_ids)


def test_score_pool_finds_the_running_worker_and_follows_the_run_to_the_end(
    tiny_clip_name, celery_worker_process
):
    import io

    from django.core.management import call_command

    caption_ids = _pool(10)
    celery_worker_process(extra_env=_worker_env())
    out = io.StringIO()
    # The worker needs a moment to connect; the command's ping waits for its answer, not for its start.
    wait_for(lambda: _answers_ping(), timeout=60, message="the worker to answer a ping")
    call_command(
        "score_pool", "--encoder", tiny_clip_name, "--chunk-size", "16", stdout=out, stderr=io.StringIO()
    )
    assert "succeeded: 30/30 pairs" in out.getvalue()
    _assert_one_score_per_pair(ScoringRun.objects.get(), caption_ids)


def _answers_ping() -> bool:
    from scoring.management.gpu_workers import workers_queues

    return any("gpu" in queues for queues in workers_queues(timeout=1.0).values())
