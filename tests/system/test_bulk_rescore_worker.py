"""Bulk rescore with real Celery workers: a worker SIGKILLed while shards are in flight, the stale-run
sweep resumes the run, and every pair ends with exactly one score for the version."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from django.conf import settings
from django.db.models import Count

from pool.models import Caption, Image, RunStatus, Shard
from scoring.active_model import ActiveModel, active_model_set
from scoring.bulk_rescore import bulk_rescore_start
from scoring.encoder_names import encoder_fingerprint
from scoring.models import Score, ScoringRun
from scoring.shard_features import shard_features_write
from tests.conftest import wait_for
from tests.scoring.tiny_clip import tiny_clip_encoder_name

pytestmark = [pytest.mark.system, pytest.mark.django_db(transaction=True)]

SHARDS, IMAGES_PER_SHARD, CAPTIONS_PER_IMAGE, DIM = 40, 100, 3, 32  # 12,000 pairs


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory) -> str:
    return tiny_clip_encoder_name(tmp_path_factory.mktemp("tiny-clip"))


def _worker_env() -> dict:
    return {
        "LOUPE_MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "LOUPE_EMBEDDING_CACHE_DIR": str(settings.EMBEDDING_CACHE_DIR),
        "LOUPE_MODEL_DIR": str(settings.MODEL_DIR),
    }


def _pool_with_features(encoder: str) -> set[int]:
    """Shards of images and captions (rows only: their bytes are never read) and their features."""
    fingerprint = encoder_fingerprint(encoder)
    rng = np.random.default_rng(0)
    caption_ids: set[int] = set()
    for s in range(SHARDS):
        shard = Shard.objects.create(uri=f"file:///pool/{s:05d}.tar", format="webdataset")
        images = Image.objects.bulk_create(
            [
                Image(
                    sha256=hashlib.sha256(f"{s}-{i}".encode()).hexdigest(),
                    width=64,
                    height=48,
                    shard=shard,
                    offset=i * 1024,
                    length=1000,
                )
                for i in range(IMAGES_PER_SHARD)
            ]
        )
        captions = Caption.objects.bulk_create(
            [
                Caption(
                    image=image,
                    text=f"shard {s} image {i} caption {j}",
                    text_sha256=hashlib.sha256(f"{s}-{i}-{j}".encode()).hexdigest(),
                    uid=hashlib.md5(f"{s}-{i}-{j}".encode()).hexdigest(),
                )
                for i, image in enumerate(images)
                for j in range(CAPTIONS_PER_IMAGE)
            ]
        )
        caption_ids.update(c.id for c in captions)
        shard_features_write(
            settings.EMBEDDING_CACHE_DIR,
            encoder,
            fingerprint,
            shard.pk,
            image_ids=[i.id for i in images],
            images=rng.standard_normal((len(images), DIM)),
            caption_ids=[c.id for c in captions],
            texts=rng.standard_normal((len(captions), DIM)),
            caption_image_row=np.repeat(np.arange(len(images)), CAPTIONS_PER_IMAGE),
        )
    return caption_ids


def _reward_model(encoder: str) -> int:
    import torch

    from scoring.reward_model import RewardEnsemble, RewardHeadConfig, save_checkpoint

    torch.manual_seed(0)
    model = RewardEnsemble(RewardHeadConfig(image_dim=DIM, text_dim=DIM, criteria=["accuracy"]))
    path = settings.MODEL_DIR / "reward-v5.pt"
    sha = save_checkpoint(path, model, {"encoder": encoder, "criteria": ["accuracy"], "version": 5})
    active_model_set(model=ActiveModel(encoder, 5, str(path), sha), encoder=encoder)
    return 5


def _run(run_id: int) -> ScoringRun:
    return ScoringRun.objects.get(pk=run_id)


def test_killed_worker_mid_bulk_rescore_is_resumed_and_scores_every_pair_once(
    tiny_clip_name, celery_worker_process
):
    from loop.tasks import runs_stale_recover_task

    caption_ids = _pool_with_features(tiny_clip_name)
    version = _reward_model(tiny_clip_name)
    first = celery_worker_process(extra_env=_worker_env())
    run = bulk_rescore_start(encoder=tiny_clip_name, reward_model_version=version)
    wait_for(
        lambda: _run(run.pk).chunks_done >= 3,
        timeout=240,
        interval=0.05,
        message=f"first shards; worker log:\n{first.log()[-3000:]}",
    )
    first.kill()  # SIGKILL, shards in flight
    killed_at = _run(run.pk)
    assert killed_at.status == RunStatus.RUNNING and killed_at.chunks_done < killed_at.chunks_total
    assert killed_at.chunks_total == SHARDS + 1  # one per shard and chunk 0 (nothing outside them here)

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
    assert (done.done, done.total, done.chunks_done) == (len(caption_ids), len(caption_ids), SHARDS + 1)
    scores = Score.objects.filter(encoder=tiny_clip_name, reward_model_version=version)
    assert set(scores.values_list("caption_id", flat=True)) == caption_ids
    assert not scores.values("caption_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    assert scores.filter(error="", reward__isnull=False, criteria__has_key="accuracy").count() == len(
        caption_ids
    )
