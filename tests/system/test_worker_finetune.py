"""A fine-tuning run through a real Celery worker: the tiny open_clip encoder is fine-tuned on real pool
files, the gate decides, and promoting the result rescores the pool through the worker with scores
under the NEW encoder's fingerprint."""

from __future__ import annotations

import pytest
from django.conf import settings

from pool.models import Caption, RunStatus
from scoring.active_model import loop_encoder_get
from scoring.encoder_names import encoder_fingerprint
from scoring.models import Score, ScoringRun
from tests.conftest import wait_for
from tests.scoring.tiny_clip import tiny_clip_encoder_name
from tests.system.test_worker_training import _judged_campaign
from training.models import ModelEvent, ModelStatus, RewardModel, TrainingRun
from training.services import training_run_create

pytestmark = [pytest.mark.system, pytest.mark.django_db(transaction=True)]


def test_finetune_run_through_a_real_worker_is_gated_promoted_and_rescored(tmp_path, celery_worker_process):
    base = tiny_clip_encoder_name(tmp_path / "tiny-clip")
    campaign = _judged_campaign(n_images=30)
    worker = celery_worker_process(
        extra_env={
            "LOUPE_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "LOUPE_EMBEDDING_CACHE_DIR": str(settings.EMBEDDING_CACHE_DIR),
            "LOUPE_MODEL_DIR": str(settings.MODEL_DIR),
            "LOUPE_SCORING_LOADER_WORKERS": "0",
            # No active model of the base encoder here, so the bar is CLIPScore + margin; random tiny
            # weights learn little in one epoch, so a negative margin makes the gate's outcome certain
            # (tests/training/test_finetune_registry.py checks both outcomes against a base model).
            "LOUPE_FINETUNE_GATE_MARGIN": "-1",
        }
    )
    run = training_run_create(
        campaign=campaign,
        encoder=base,
        promote_if_better=True,
        finetune={"mode": "last_blocks", "blocks": 1, "epochs": 1, "n_heads": 2, "hidden": 16},
    )
    wait_for(
        lambda: TrainingRun.objects.get(pk=run.pk).is_finished,
        timeout=300,
        message=f"fine-tuning run {run.pk} to finish; worker log:\n{worker.log()[-3000:]}",
    )
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, f"{run.error}\n{worker.log()[-3000:]}"
    model = RewardModel.objects.get()
    assert run.model == model and model.encoder != base
    assert model.metrics["finetune"]["base_encoder"] == base
    assert model.encoder_fingerprint == encoder_fingerprint(model.encoder) != encoder_fingerprint(base)
    actions = set(ModelEvent.objects.filter(model=model).values_list("action", flat=True))
    assert {"trained", "gate_passed", "promoted", "rescore_queued"} <= actions
    model.refresh_from_db()
    assert model.status == ModelStatus.ACTIVE
    assert "re-encodes the pool" in model.metrics["gate"]["note"]
    assert loop_encoder_get() == model.encoder

    rescore = ScoringRun.objects.get(encoder=model.encoder)
    assert rescore.reward_model_version == model.version
    done = wait_for(
        lambda: ScoringRun.objects.get(pk=rescore.pk).is_finished and ScoringRun.objects.get(pk=rescore.pk),
        timeout=300,
        message=f"rescore run {rescore.pk} to finish; worker log:\n{worker.log()[-3000:]}",
    )
    assert done.status == RunStatus.SUCCEEDED, f"{done.error}\n{worker.log()[-3000:]}"
    scores = Score.objects.filter(encoder=model.encoder, reward_model_version=model.version)
    assert scores.count() == Caption.objects.count() == 90
    assert set(scores.values_list("encoder_fingerprint", flat=True)) == {model.encoder_fingerprint}
    assert scores.filter(error="", reward__isnull=False).count() == 90
