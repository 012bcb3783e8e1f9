"""A training run through a real Celery worker: real files, the tiny open_clip encoder, the
embedding cache, the gpu queue, and a registered (and gated) reward model at the end."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from annotate.models import Campaign, Judgment, Task, TaskCaption, default_criteria
from pool.models import RunStatus
from scoring.reward_model import load_checkpoint
from tests.conftest import image_bytes, wait_for
from tests.scoring.conftest import pool_caption, pool_image
from tests.scoring.tiny_clip import tiny_clip_encoder_name
from training.config import TrainConfig
from training.models import ModelEvent, RewardModel, TrainingRun
from training.services import training_run_create

pytestmark = [pytest.mark.system, pytest.mark.django_db(transaction=True)]


def _judged_campaign(n_images: int = 40) -> Campaign:
    """Each task ranks three captions the same way (the detailed one first), with ratings to match."""
    campaign = Campaign.objects.create(name="worker-training", criteria=default_criteria()[:2], overlap=1)
    user = User.objects.create_user("sim-annotator")
    for i in range(n_images):
        image = pool_image(image_bytes(40, 32, seed=100 + i))
        task = Task.objects.create(campaign=campaign, image=image, judgment_count=1)
        texts = [f"a detailed photo of pattern {i} in red and blue", f"pattern {i}", "image"]
        captions = [pool_caption(image, text) for text in texts]
        for position, caption in enumerate(captions):
            TaskCaption.objects.create(task=task, caption=caption, position=position)
        Judgment.objects.create(
            task=task,
            user=user,
            ranking=[[captions[0].pk], [captions[1].pk], [captions[2].pk]],
            ratings={
                str(c.pk): {"accuracy": 5 - 2 * k, "completeness": 5 - 2 * k} for k, c in enumerate(captions)
            },
            client_key=uuid.uuid4(),
        )
    return campaign


def test_training_run_through_a_real_worker_registers_a_model(tmp_path, celery_worker_process):
    encoder = tiny_clip_encoder_name(tmp_path / "tiny-clip")
    campaign = _judged_campaign()
    worker = celery_worker_process(
        extra_env={
            "LOUPE_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "LOUPE_EMBEDDING_CACHE_DIR": str(settings.EMBEDDING_CACHE_DIR),
            "LOUPE_MODEL_DIR": str(settings.MODEL_DIR),
            "LOUPE_SCORING_LOADER_WORKERS": "0",
        }
    )
    run = training_run_create(
        campaign=campaign,
        encoder=encoder,
        config=TrainConfig(epochs=8, hidden=16, n_heads=2, batch_size=64),
        promote_if_better=True,
    )
    wait_for(
        lambda: TrainingRun.objects.get(pk=run.pk).is_finished,
        timeout=300,
        message=f"training run {run.pk} to finish; worker log:\n{worker.log()[-3000:]}",
    )
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, f"{run.error}\n{worker.log()[-3000:]}"
    model = RewardModel.objects.get()
    assert run.model == model and model.encoder == encoder
    assert model.n_judgments == 40 and model.n_pairs == 120
    assert model.metrics["n_pairs"] > 0 and model.metrics["accuracy"] is not None
    assert Path(model.checkpoint).parent == Path(settings.MODEL_DIR)
    _, meta = load_checkpoint(model.checkpoint)
    assert meta["encoder"] == encoder and meta["version"] == model.version

    def actions() -> list[str]:
        events = ModelEvent.objects.filter(model=model).order_by("created_at", "id")
        return list(events.values_list("action", flat=True))

    # The run is marked succeeded when the model is registered; the task then gates and promotes.
    wait_for(
        lambda: len(actions()) >= 3, timeout=60, message=f"gate and promotion; events so far {actions()}"
    )
    # Eight epochs on this seed beat CLIPScore on the held-out pairs: the gate passes, the model is active.
    assert actions() == ["trained", "gate_passed", "promoted"]
