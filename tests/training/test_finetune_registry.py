"""Fine-tuned reward models in the registry: ``reward_model_finetune`` on the tiny open_clip encoder and
a judged campaign whose images are real files in the pool, the gate against the base encoder's active
model, and what promoting one does (a rescore run, the loop's encoder)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
from django.contrib.auth.models import User

from annotate.models import Campaign, Judgment, Task, TaskCaption, default_criteria
from pool.models import RunStatus
from scoring.active_model import active_model_get, loop_encoder_get
from scoring.encoder_names import encoder_fingerprint
from scoring.models import ScoringRun
from tests.conftest import image_bytes
from tests.scoring.conftest import pool_caption, pool_image
from tests.scoring.tiny_clip import tiny_clip_encoder_name
from training.candidates import reward_model_finetune, reward_model_gate, reward_model_train
from training.config import TrainConfig
from training.finetune import FinetuneError, TrainingCancelled
from training.models import ModelEvent, ModelStatus, RewardModel, TrainingRun
from training.services import RegistryError, reward_model_promote, training_run_create

# One epoch, two small heads: the tests are about the registry, not about learning.
FT = {"mode": "last_blocks", "blocks": 1, "epochs": 1, "batch_size": 64, "n_heads": 2, "hidden": 16}


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine's 2 cores are shared: two torch threads fighting other jobs are several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return tiny_clip_encoder_name(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(autouse=True)
def _small_floor(settings):
    settings.LOUPE_REWARD_MIN_JUDGMENTS = 20


def judged_pool_campaign(n_images: int = 30) -> Campaign:
    """Each task ranks three captions the same way (the detailed one first); images are real files."""
    campaign = Campaign.objects.create(name="ft-campaign", criteria=default_criteria()[:2], overlap=1)
    user = User.objects.create_user("ft-annotator")
    for i in range(n_images):
        image = pool_image(image_bytes(40, 32, seed=300 + i))
        task = Task.objects.create(campaign=campaign, image=image, judgment_count=1)
        texts = [f"a detailed photo of pattern {i} in red and blue", f"pattern {i}", "image"]
        captions = [pool_caption(image, text) for text in texts]
        for position, caption in enumerate(captions):
            TaskCaption.objects.create(task=task, caption=caption, position=position)
        Judgment.objects.create(
            task=task,
            user=user,
            ranking=[[c.pk] for c in captions],
            ratings={
                str(c.pk): {"accuracy": 5 - 2 * k, "completeness": 5 - 2 * k} for k, c in enumerate(captions)
            },
            client_key=uuid.uuid4(),
        )
    return campaign


@pytest.fixture
def campaign(db) -> Campaign:
    return judged_pool_campaign()


@pytest.fixture
def active_base(campaign, tiny) -> RewardModel:
    """A frozen-head model of the base encoder, active: the bar a fine-tune must clear."""
    model = reward_model_train(
        campaign=campaign, encoder=tiny, config=TrainConfig(epochs=2, hidden=16, n_heads=2)
    )
    return reward_model_promote(model=model, note="base")


def test_finetune_registers_a_model_under_a_new_encoder_with_its_own_fingerprint(campaign, tiny, active_base):
    run = TrainingRun.objects.create(campaign=campaign, encoder=tiny, params={"finetune": FT})
    model = reward_model_finetune(campaign=campaign, base_encoder=tiny, finetune_config=FT, run=run)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.model == model
    assert model.encoder != tiny and model.encoder.startswith("open_clip:loupe-tiny-clip:")
    assert f"ft-run{run.pk}.encoder.pt" in model.encoder
    assert model.encoder_fingerprint == encoder_fingerprint(model.encoder) != encoder_fingerprint(tiny)
    assert model.status == ModelStatus.CANDIDATE and Path(model.checkpoint).is_file()
    ft = model.metrics["finetune"]
    assert ft["base_encoder"] == tiny and ft["mode"] == "last_blocks" and ft["trainable_parameters"] > 0
    assert ft["seconds_per_epoch"] is not None and ft["peak_memory_mb"] > 0
    assert model.metrics["accuracy"] is not None and model.metrics["n_pairs"] > 0
    # Compared with the base encoder's active frozen-head model on the same held-out pairs.
    assert model.metrics["active"]["version"] == active_base.version
    assert model.metrics["active"]["n_pairs"] == model.metrics["n_pairs"]
    assert model.config["base_encoder"] == tiny


def test_a_cancelled_finetune_registers_nothing(campaign, tiny):
    run = TrainingRun.objects.create(campaign=campaign, encoder=tiny, params={"finetune": FT})

    def cancel_after_first_epoch(epoch, epochs, record):
        TrainingRun.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLED)

    with pytest.raises(TrainingCancelled):
        reward_model_finetune(
            campaign=campaign,
            base_encoder=tiny,
            finetune_config={**FT, "epochs": 2},
            run=run,
            progress=cancel_after_first_epoch,
        )
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.model is None
    assert not RewardModel.objects.exists()


def test_a_bad_finetune_request_fails_the_run_with_the_reason(campaign, tiny):
    run = TrainingRun.objects.create(campaign=campaign, encoder=tiny, params={"finetune": {"blocks": 99}})
    with pytest.raises(FinetuneError):
        reward_model_finetune(campaign=campaign, base_encoder=tiny, finetune_config={"blocks": 99}, run=run)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "blocks=99 is impossible" in run.error


@pytest.fixture
def finetuned(campaign, tiny, active_base) -> RewardModel:
    return reward_model_finetune(campaign=campaign, base_encoder=tiny, finetune_config=FT)


def test_gate_refuses_a_finetune_that_does_not_beat_the_base_model_by_the_margin(finetuned, settings):
    settings.LOUPE_FINETUNE_GATE_MARGIN = 1.01  # no accuracy can win by more than 1
    assert reward_model_gate(candidate=finetuned) is False
    gate = finetuned.metrics["gate"]
    assert gate["margin"] == 1.01 and gate["base_encoder"] == finetuned.metrics["finetune"]["base_encoder"]
    assert f"active v{finetuned.metrics['active']['version']}" in gate["note"]
    assert "re-encodes the pool: 90 pairs in the pool" in gate["note"]
    assert ModelEvent.objects.filter(model=finetuned, action="gate_refused").exists()


def test_gate_passes_a_finetune_that_beats_the_base_model_by_the_margin(finetuned, settings):
    settings.LOUPE_FINETUNE_GATE_MARGIN = 0.02
    finetuned.metrics = {**finetuned.metrics, "accuracy": finetuned.metrics["active"]["accuracy"] + 0.03}
    finetuned.save(update_fields=["metrics"])
    assert reward_model_gate(candidate=finetuned) is True
    finetuned.metrics = {**finetuned.metrics, "accuracy": finetuned.metrics["active"]["accuracy"] + 0.01}
    assert reward_model_gate(candidate=finetuned) is False  # a win within the margin is not enough


def test_promoting_a_finetune_queues_a_rescore_and_moves_the_loop_encoder(finetuned, tiny, active_base):
    assert loop_encoder_get() != finetuned.encoder
    reward_model_promote(model=finetuned)
    pointer = active_model_get(encoder=finetuned.encoder)
    assert pointer is not None and pointer.version == finetuned.version
    assert loop_encoder_get() == finetuned.encoder
    run = ScoringRun.objects.get()
    assert run.encoder == finetuned.encoder and run.reward_model_version == finetuned.version
    assert run.encoder_fingerprint == finetuned.encoder_fingerprint
    # The base encoder's model stays active for its own encoder (a rollback target and its scores).
    active_base.refresh_from_db()
    assert active_base.status == ModelStatus.ACTIVE
    assert ModelEvent.objects.filter(model=finetuned, action="rescore_queued").exists()


def test_training_run_create_stores_a_checked_finetune_request(campaign, tiny):
    run = training_run_create(
        campaign=campaign, encoder=tiny, finetune={"mode": "lora", "blocks": 0, "epochs": 3}
    )
    assert run.params["finetune"] == {"mode": "lora", "blocks": 0, "epochs": 3} and run.total == 3
    with pytest.raises(FinetuneError, match="not one of"):
        training_run_create(campaign=campaign, encoder=tiny, finetune={"mode": "full"})
    with pytest.raises(FinetuneError, match="Unknown fine-tuning settings: blcks"):
        training_run_create(campaign=campaign, encoder=tiny, finetune={"blcks": 2})


def test_the_start_form_queues_a_finetune_run(client, admin_user, db, tiny):
    from django.urls import reverse

    campaign = Campaign.objects.create(name="form-campaign", criteria=default_criteria()[:2])
    client.force_login(admin_user)
    assert "Fine-tune the encoder" in client.get(reverse("training:model_list")).content.decode()
    form = {"campaign": campaign.pk, "encoder": tiny, "epochs": 2, "seed": 0, "finetune": "lora", "blocks": 0}
    response = client.post(reverse("training:training_start"), form)
    assert response.status_code == 302
    run = TrainingRun.objects.get()
    assert run.params["finetune"] == {"mode": "lora", "epochs": 2, "seed": 0, "blocks": 0}


def test_the_start_form_refuses_an_impossible_finetune(client, admin_user, db, tiny):
    from django.urls import reverse

    campaign = Campaign.objects.create(name="form-campaign", criteria=default_criteria()[:2])
    client.force_login(admin_user)
    form = {
        "campaign": campaign.pk,
        "encoder": tiny,
        "epochs": 2,
        "seed": 0,
        "finetune": "last_blocks",
        "blocks": 0,
    }
    response = client.post(reverse("training:training_start"), form)
    assert response.status_code == 400 and "last_blocks needs blocks &gt;= 1" in response.content.decode()
    assert not TrainingRun.objects.exists()


def test_train_reward_refuses_finetune_options_that_cannot_work(db):
    from django.core.management import CommandError, call_command

    Campaign.objects.create(name="cli-campaign", criteria=default_criteria()[:2])
    with pytest.raises(CommandError, match="only apply with --finetune"):
        call_command("train_reward", campaign="cli-campaign", blocks=2)
    with pytest.raises(CommandError, match="convolutional network"):
        call_command(
            "train_reward",
            campaign="cli-campaign",
            encoder="offline:effnet-minilm",
            finetune="lora",
            towers="image",
        )


def test_rolling_back_a_promoted_finetune_points_the_loop_at_the_base_encoder_again(
    finetuned, tiny, active_base
):
    from training.services import reward_model_rollback

    reward_model_promote(model=finetuned)
    assert loop_encoder_get() == finetuned.encoder
    restored = reward_model_rollback(
        user=None
    )  # the loop's encoder (the fine-tuned one) has no earlier model
    assert restored.pk == active_base.pk and loop_encoder_get() == active_base.encoder
    assert ModelEvent.objects.filter(model=active_base, action="rolled_back").exists()
    with pytest.raises(RegistryError, match="already active"):
        reward_model_rollback(user=None, to_version=active_base.version)
    # And forward again by version: the fine-tuned model is still active for its own encoder.
    reward_model_rollback(user=None, to_version=finetuned.version)
    assert loop_encoder_get() == finetuned.encoder
