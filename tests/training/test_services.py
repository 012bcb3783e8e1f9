"""Registry services on the database: train -> candidate, gate, promote, rollback, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection, connections

from pool.models import RunStatus
from scoring.active_model import active_model_get
from scoring.reward_model import load_checkpoint
from tests.training.factories import judged_campaign
from training.candidates import TrainingBusy, reward_model_gate, reward_model_train, training_lock
from training.config import TrainConfig
from training.data import EncoderMismatchError, TrainingDataError, checkpoint_encoder_check
from training.models import ModelEvent, ModelStatus, RewardModel, TrainingRun
from training.pairs import image_split
from training.services import RegistryError, reward_model_promote, reward_model_rollback

ENC = "offline:effnet-minilm"
GOOD = TrainConfig(epochs=30, hidden=32, n_heads=3, batch_size=64, lr=1e-2)
# Where only the existence of a model matters.
QUICK = TrainConfig(epochs=2, hidden=8, n_heads=2, batch_size=4096)
# One epoch at a tiny learning rate: an honestly trained but near-random model.
POOR = TrainConfig(epochs=1, hidden=8, n_heads=2, batch_size=4096, lr=1e-6, seed=2)


def _events(model) -> list[str]:
    return list(
        ModelEvent.objects.filter(model=model).order_by("created_at", "id").values_list("action", flat=True)
    )


def test_training_registers_a_candidate_with_its_report(judged):
    model = reward_model_train(campaign=judged.campaign, encoder=ENC, config=GOOD)
    assert model.status == ModelStatus.CANDIDATE and model.version == 1
    assert model.n_judgments == 60 and model.n_pairs == 360
    m = model.metrics
    assert m["accuracy"] > m["clipscore_accuracy"]
    assert m["accuracy"] >= 0.7
    assert set(m["spearman"]) == {"accuracy", "completeness"}
    assert m["n_pairs"] > 0 and m["ece"] is not None
    net, meta = load_checkpoint(model.checkpoint)
    assert (
        meta["encoder"] == ENC and meta["version"] == 1 and meta["criteria"] == ["accuracy", "completeness"]
    )
    assert len(model.checkpoint_sha256) == 64
    run = TrainingRun.objects.get(model=model)
    assert run.status == RunStatus.SUCCEEDED and run.done == run.total > 0
    assert _events(model) == ["trained"]
    assert active_model_get(encoder=ENC) is None  # training alone never activates


def test_first_model_passes_gate_by_beating_clipscore_and_promotion_writes_pointer(judged, admin_user):
    model = reward_model_train(campaign=judged.campaign, encoder=ENC, config=GOOD)
    assert reward_model_gate(candidate=model) is True
    reward_model_promote(model=model, user=admin_user, note="first")
    model.refresh_from_db()
    assert model.status == ModelStatus.ACTIVE and model.promoted_at is not None
    pointer = active_model_get(encoder=ENC)
    assert pointer.version == model.version and pointer.checkpoint_sha256 == model.checkpoint_sha256
    assert _events(model) == ["trained", "gate_passed", "promoted"]


def test_first_model_worse_than_clipscore_is_refused(judged):
    model = reward_model_train(campaign=judged.campaign, encoder=ENC, config=POOR)
    assert model.metrics["accuracy"] <= model.metrics["clipscore_accuracy"]
    assert reward_model_gate(candidate=model) is False
    model.refresh_from_db()
    assert model.metrics["gate"]["passed"] is False and "CLIPScore" in model.metrics["gate"]["note"]
    assert _events(model)[-1] == "gate_refused"


def test_gate_refuses_a_worse_candidate_on_the_same_pairs(judged):
    active = reward_model_promote(
        model=reward_model_train(campaign=judged.campaign, encoder=ENC, config=GOOD)
    )
    worse = reward_model_train(campaign=judged.campaign, encoder=ENC, config=POOR)
    assert worse.metrics["active"]["version"] == active.version
    assert worse.metrics["active"]["n_pairs"] == worse.metrics["n_pairs"]
    assert reward_model_gate(candidate=worse, tolerance=0.01) is False
    active.refresh_from_db()
    assert active.status == ModelStatus.ACTIVE
    assert active_model_get(encoder=ENC).version == active.version


def test_gate_accepts_a_better_candidate(judged):
    weak = reward_model_promote(model=reward_model_train(campaign=judged.campaign, encoder=ENC, config=POOR))
    better = reward_model_train(campaign=judged.campaign, encoder=ENC, config=GOOD)
    assert better.metrics["accuracy"] > better.metrics["active"]["accuracy"]
    assert reward_model_gate(candidate=better) is True
    reward_model_promote(model=better)
    weak.refresh_from_db()
    assert weak.status == ModelStatus.RETIRED
    assert _events(weak)[-1] == "retired"


def test_tolerance_lets_an_equal_candidate_through(judged):
    reward_model_promote(model=reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK))
    same = reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK)
    assert same.metrics["accuracy"] == pytest.approx(same.metrics["active"]["accuracy"])
    assert reward_model_gate(candidate=same, tolerance=0.0) is True


def test_too_few_judgments_says_how_many_and_leaves_active_untouched(db, synthetic_features):
    big = judged_campaign(name="big", n_images=60)
    small = judged_campaign(name="small", n_images=10, seed=3)
    synthetic_features(big, small)
    active = reward_model_promote(model=reward_model_train(campaign=big.campaign, encoder=ENC, config=QUICK))
    with pytest.raises(TrainingDataError, match=r"has 10 judgments; .* at least 30"):
        reward_model_train(campaign=small.campaign, encoder=ENC, config=QUICK)
    run = TrainingRun.objects.filter(campaign=small.campaign).get()
    assert run.status == RunStatus.FAILED and "at least 30" in run.error
    assert RewardModel.objects.count() == 1
    active.refresh_from_db()
    assert active.status == ModelStatus.ACTIVE and active_model_get(encoder=ENC).version == active.version


def test_campaign_without_held_out_images_is_refused(db, synthetic_features, settings):
    settings.LOUPE_REWARD_MIN_JUDGMENTS = 4
    jc = judged_campaign(name="tiny", n_images=6)
    train_only = [k for k in (f"train-only-{i}" for i in range(200)) if image_split(k) == "train"][:6]
    from pool.models import Image

    for task_image, key in zip(Image.objects.order_by("id"), train_only, strict=True):
        Image.objects.filter(pk=task_image.pk).update(sha256=key)
    synthetic_features(jc)
    with pytest.raises(TrainingDataError, match="no held-out images"):
        reward_model_train(campaign=jc.campaign, encoder=ENC, config=QUICK)
    assert not RewardModel.objects.exists()


def test_active_checkpoint_of_another_encoder_is_not_compared_and_gate_refuses(judged, tmp_path):
    active = reward_model_promote(
        model=reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK)
    )
    # The active model's file says it was trained on another encoder (e.g. swapped on disk).
    net, meta = load_checkpoint(active.checkpoint)
    from scoring.reward_model import save_checkpoint

    sha = save_checkpoint(active.checkpoint, net, {**meta, "encoder": "open_clip:ViT-L-14:other"})
    RewardModel.objects.filter(pk=active.pk).update(checkpoint_sha256=sha)
    candidate = reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK)
    assert "trained on encoder 'open_clip:ViT-L-14:other'" in candidate.metrics["active"]["error"]
    assert reward_model_gate(candidate=candidate) is False
    active.refresh_from_db()
    assert active.status == ModelStatus.ACTIVE


def test_encoder_check_names_both_encoders():
    with pytest.raises(EncoderMismatchError, match="'a'.*'b'"):
        checkpoint_encoder_check(meta={"encoder": "a", "version": 3}, encoder="b")


def test_rollback_reactivates_the_previous_model(judged, admin_user):
    first = reward_model_promote(
        model=reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK)
    )
    second = reward_model_promote(
        model=reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK)
    )
    restored = reward_model_rollback(user=admin_user, encoder=ENC)
    assert restored.pk == first.pk and restored.status == ModelStatus.ACTIVE
    second.refresh_from_db()
    assert second.status == ModelStatus.RETIRED
    assert active_model_get(encoder=ENC).version == first.version
    assert _events(first)[-1] == "rolled_back"
    assert ModelEvent.objects.filter(model=first, action="rolled_back").get().user == admin_user


def test_rollback_without_an_earlier_model_is_refused(judged, admin_user):
    reward_model_promote(model=reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK))
    with pytest.raises(RegistryError, match="No earlier active model"):
        reward_model_rollback(user=admin_user, encoder=ENC)


def test_promote_refuses_a_changed_checkpoint(judged):
    model = reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK)
    Path(model.checkpoint).write_bytes(Path(model.checkpoint).read_bytes() + b"x")
    with pytest.raises(RegistryError, match="sha256"):
        reward_model_promote(model=model)
    model.refresh_from_db()
    assert model.status == ModelStatus.CANDIDATE and active_model_get(encoder=ENC) is None


def test_second_training_while_one_holds_the_lock_is_refused(judged):
    if connection.vendor == "postgresql":
        other = connections.create_connection("default")
        with other.cursor() as cursor:
            from training.candidates import _LOCK_KEY

            cursor.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
        try:
            with pytest.raises(TrainingBusy):
                reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK)
        finally:
            other.close()
    else:
        with training_lock(), pytest.raises(TrainingBusy):
            reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK)
    assert not RewardModel.objects.exists()


def test_a_model_records_the_encoder_weights_and_the_exact_judgments_it_was_trained_on(judged):
    from django.db.models import Max

    from annotate.models import Judgment
    from scoring.encoder_names import encoder_fingerprint

    model = reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK)
    assert model.encoder_fingerprint == encoder_fingerprint(ENC) != ""
    judgments = model.config["judgments"]
    assert judgments["count"] == 60 and len(judgments["sha256"]) == 64
    assert judgments["last_judgment_id"] == Judgment.objects.aggregate(m=Max("id"))["m"]
    _net, meta = load_checkpoint(model.checkpoint)
    assert meta["encoder_fingerprint"] == model.encoder_fingerprint and meta["judgments"] == judgments
    # One more judgment changes the digest: the record names exactly the judgments used.
    Judgment.objects.filter(pk=judgments["last_judgment_id"]).update(ranking=[[1], [2]])
    again = reward_model_train(campaign=judged.campaign, encoder=ENC, config=QUICK)
    assert again.config["judgments"]["sha256"] != judgments["sha256"]


def test_a_run_cancelled_between_epochs_registers_no_model(judged):
    from training.services import training_run_cancel
    from training.train import TrainingCancelled

    run = TrainingRun.objects.create(campaign=judged.campaign, encoder=ENC)
    epochs: list[int] = []

    def cancel_at_epoch_two(epoch, total, record):
        epochs.append(epoch)
        if epoch == 2:
            assert training_run_cancel(run=run)

    with pytest.raises(TrainingCancelled):
        reward_model_train(
            campaign=judged.campaign,
            encoder=ENC,
            config=TrainConfig(epochs=10, hidden=8, n_heads=2, batch_size=64, patience=100),
            run=run,
            progress=cancel_at_epoch_two,
        )
    assert epochs == [1, 2]
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.model_id is None and "cancelled after 2" in run.log
    assert not RewardModel.objects.exists()


def test_a_cancelled_loop_chain_stops_its_training_and_registers_no_model(judged):
    from loop.models import LoopRun
    from loop.services import loop_cancel
    from training.train import TrainingCancelled

    chain = LoopRun.objects.create(campaign=judged.campaign, status=RunStatus.RUNNING, params={})
    run = TrainingRun.objects.create(campaign=judged.campaign, encoder=ENC, params={"loop_run": chain.pk})
    chain.params = {"training_run_id": run.pk}
    chain.save(update_fields=["params"])

    def cancel_chain(epoch, total, record):
        if epoch == 1:
            loop_cancel(run=chain)

    with pytest.raises(TrainingCancelled):
        reward_model_train(
            campaign=judged.campaign, encoder=ENC, config=QUICK, run=run, progress=cancel_chain
        )
    assert TrainingRun.objects.get(pk=run.pk).status == RunStatus.CANCELLED
    assert not RewardModel.objects.exists()
