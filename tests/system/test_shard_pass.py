"""The shard pass with real Celery workers: a worker SIGKILLed mid-shard, the stale-run sweep resumes
the run, and every pair ends with exactly one CLIPScore row and every image with its inspection."""

from __future__ import annotations

import re
import time

import pytest
from django.conf import settings
from django.db.models import Count

from pool.importing import pool_import
from pool.models import Caption, Image, ImageStatus, RunStatus, Shard
from scoring.models import Score, ShardPassRun, ShardPassShard
from scoring.shard_features import shard_features_ids
from scoring.shard_pass import shard_pass_start
from tests.conftest import image_bytes, wait_for
from tests.pool.conftest import i2d_row, truncated_jpeg, write_i2d_webdataset
from tests.scoring.tiny_clip import tiny_clip_encoder_name

pytestmark = [pytest.mark.system, pytest.mark.django_db(transaction=True)]

SHARDS, PER_SHARD = 4, 150
BAD_KEY = f"{PER_SHARD + 7:09d}"  # in the second shard


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory) -> str:
    return tiny_clip_encoder_name(tmp_path_factory.mktemp("tiny-clip"))


def _worker_env() -> dict:
    return {
        "LOUPE_MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "LOUPE_EMBEDDING_CACHE_DIR": str(settings.EMBEDDING_CACHE_DIR),
        "LOUPE_MODEL_DIR": str(settings.MODEL_DIR),
        "LOUPE_SCORING_LOADER_WORKERS": "0",
        # Small batches: the worker stamps its heartbeat and is inside a shard for longer.
        "LOUPE_SCORING_BATCH_SIZE": "16",
    }


def _pool(folder) -> None:
    for s in range(SHARDS):
        rows, images = [], {}
        for i in range(s * PER_SHARD, (s + 1) * PER_SHARD):
            key = f"{i:09d}"
            rows.append(i2d_row(key, f"{i:032x}", f"a photo number {i}"))
            images[key] = truncated_jpeg() if key == BAD_KEY else image_bytes(96, 80, seed=1000 + i)
        write_i2d_webdataset(folder, f"{s:05d}", rows, images)
    assert pool_import(source=str(folder)).status == RunStatus.SUCCEEDED


def _mid_shard(log: str, run_id: int) -> bool:
    started = {int(m) for m in re.findall(rf"shard pass {run_id}: shard (\d+) started", log)}
    done = set(ShardPassShard.objects.filter(run_id=run_id, done=True).values_list("shard_id", flat=True))
    return bool(started - done)


def _run(run_id: int) -> ShardPassRun:
    return ShardPassRun.objects.get(pk=run_id)


def test_a_worker_killed_mid_shard_is_resumed_and_every_pair_scored_once(
    tiny_clip_name, celery_worker_process, tmp_path
):
    from loop.tasks import runs_stale_recover_task

    _pool(tmp_path / "source")
    first = celery_worker_process(extra_env=_worker_env())
    run = shard_pass_start(encoder=tiny_clip_name)
    # Killed inside a shard: one shard committed, and the worker has started one it has not committed.
    wait_for(
        lambda: _run(run.pk).shards_done >= 1 and _mid_shard(first.log(), run.pk),
        timeout=300,
        interval=0.05,
        message=f"the worker inside its second shard; worker log:\n{first.log()[-3000:]}",
    )
    first.kill()
    killed_at = _run(run.pk)
    assert killed_at.status == RunStatus.RUNNING and killed_at.shards_done < SHARDS
    assert killed_at.heartbeat_at is not None

    # The sweep runs on the default queue, the shard tasks on the gpu queue: one worker takes both.
    second = celery_worker_process(extra_env=_worker_env())
    time.sleep(1.5)
    runs_stale_recover_task.delay(older_than_seconds=1)
    done = wait_for(
        lambda: _run(run.pk).is_finished and _run(run.pk),
        timeout=420,
        message=f"the run to finish after the sweep; worker log:\n{second.log()[-3000:]}",
    )
    assert done.status == RunStatus.SUCCEEDED, done.error
    assert done.stale_resumes >= 1
    pairs = Caption.objects.count()
    assert (done.shards_done, done.done, done.total) == (SHARDS, pairs, pairs)
    assert (done.unreadable_images, done.failed_pairs) == (1, 1)
    assert ShardPassShard.objects.filter(run=done, done=True).count() == SHARDS

    scores = Score.objects.filter(encoder=tiny_clip_name, reward_model_version=0)
    assert set(scores.values_list("caption_id", flat=True)) == set(
        Caption.objects.values_list("id", flat=True)
    )
    assert not scores.values("caption_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    assert scores.filter(error="", clipscore__isnull=False).count() == pairs - 1

    bad = Caption.objects.get(key=BAD_KEY).image
    assert bad.status == ImageStatus.UNREADABLE and bad.inspected_at is not None
    good = Image.objects.exclude(pk=bad.pk)
    assert not good.filter(inspected_at__isnull=True).exists() and not good.filter(phash="").exists()
    assert not good.exclude(status=ImageStatus.OK).exists()

    from scoring.encoder_names import encoder_fingerprint

    assert shard_features_ids(
        settings.EMBEDDING_CACHE_DIR, tiny_clip_name, encoder_fingerprint(tiny_clip_name)
    ) == sorted(Shard.objects.values_list("pk", flat=True))
