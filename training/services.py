"""The reward model registry: queue a training, promote (the only way a model becomes active), roll
back. Every change is logged as a ModelEvent. No ML here (the web tier imports this module): training
a candidate and gating it are ``training.candidates``, run by workers."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotate.models import Campaign
from pool.hashing import file_sha256
from pool.models import RunStatus
from scoring.active_model import ActiveModel, active_model_set, loop_encoder_get, loop_encoder_set
from training.config import TrainConfig
from training.finetune_config import FinetuneConfig, finetune_params_check
from training.models import ModelEvent, ModelStatus, RewardModel, TrainingRun

logger = logging.getLogger(__name__)

# Accuracy a candidate may lose against the active model on the same held-out pairs and still pass:
# held-out sets are small, so a hair's difference is noise, not a regression.
DEFAULT_GATE_TOLERANCE = 0.01


class RegistryError(ValueError):
    """A promote or rollback that cannot be done; the message says why."""


# Accuracy a FINE-TUNED candidate must GAIN over the active frozen-head model of its base encoder on the
# same held-out pairs. Unlike new heads (rescored from the embedding cache in minutes), a fine-tuned
# encoder has an empty cache: promoting it re-encodes every image and caption of the pool, about
# 256 ms per pair on a CPU and 0.6 ms on an H100 for ViT-L-14 (docs/finetune.md), i.e. days of CPU for
# a million pairs. A win within noise is not worth that, so it must win clearly, not just not lose.
DEFAULT_FINETUNE_GATE_MARGIN = 0.02
# Seconds to rescore one pair with a new encoder, for the gate's cost note (CPU figure of
# docs/finetune.md, ViT-B-32-sized; set it to what benchmarks/scoring.py measures on your workers).
DEFAULT_RESCORE_SECONDS_PER_PAIR = 0.256


def gate_tolerance() -> float:
    return float(getattr(settings, "LOUPE_GATE_TOLERANCE", DEFAULT_GATE_TOLERANCE))


def finetune_gate_margin() -> float:
    return float(getattr(settings, "LOUPE_FINETUNE_GATE_MARGIN", DEFAULT_FINETUNE_GATE_MARGIN))


def rescore_cost_note() -> str:
    """'N pairs x S s ≈ T': what promoting a new encoder costs, for the gate's note."""
    from pool.models import Caption

    pairs = Caption.objects.count()
    per_pair = float(getattr(settings, "LOUPE_RESCORE_SECONDS_PER_PAIR", DEFAULT_RESCORE_SECONDS_PER_PAIR))
    total = pairs * per_pair
    human = (
        f"{total / 3600:.1f} h"
        if total >= 3600
        else f"{total / 60:.1f} min"
        if total >= 60
        else f"{total:.0f} s"
    )
    return f"{pairs:,} pairs in the pool x {per_pair * 1000:.1f} ms per pair ≈ {human} to re-encode"


def finetune_base_encoder(model: RewardModel) -> str | None:
    """The encoder a fine-tuned model's encoder was tuned from; None for frozen-head models."""
    return ((model.metrics or {}).get("finetune") or {}).get("base_encoder") or (model.config or {}).get(
        "base_encoder"
    )


def model_event(model: RewardModel, action: str, note: str = "", user=None) -> ModelEvent:
    return ModelEvent.objects.create(model=model, action=action, note=note, user=user)


def checkpoint_path(version: int) -> Path:
    # Versions are unique across encoders, so the version alone names the file; the encoder is inside.
    return Path(settings.MODEL_DIR) / f"reward-v{version}.pt"


def active_reward_model(encoder: str) -> RewardModel | None:
    return RewardModel.objects.filter(encoder=encoder, status=ModelStatus.ACTIVE).first()


def reward_model_promote(
    *, model: RewardModel, user=None, note: str = "", action: str = "promoted"
) -> RewardModel:
    """Make ``model`` the active model of its encoder: retire the old one, write the pointer file."""
    with transaction.atomic():
        model = RewardModel.objects.select_for_update().get(pk=model.pk)
        if model.status == ModelStatus.ACTIVE:
            return model
        path = Path(model.checkpoint)
        if not path.is_file():
            raise RegistryError(
                f"Reward model v{model.version}'s checkpoint {path} is missing; it cannot be activated."
            )
        if model.checkpoint_sha256 and file_sha256(path) != model.checkpoint_sha256:
            raise RegistryError(
                f"Reward model v{model.version}'s checkpoint {path} does not match its recorded sha256; "
                "it was changed or damaged after training."
            )
        for old in RewardModel.objects.select_for_update().filter(
            encoder=model.encoder, status=ModelStatus.ACTIVE
        ):
            old.status = ModelStatus.RETIRED
            old.save(update_fields=["status"])
            model_event(old, "retired", f"replaced by v{model.version}", user)
        model.status = ModelStatus.ACTIVE
        model.promoted_at = timezone.now()
        model.save(update_fields=["status", "promoted_at"])
        model_event(model, action, note, user)
        # Inside the transaction: if the pointer cannot be written, the database change rolls back too.
        rescore = None
        if finetune_base_encoder(model):
            # A fine-tuned encoder has no cached features and no scores yet: the whole pool is encoded
            # again with it (queued on commit). Checked here, before the pointers move: a run that
            # cannot start (checkpoint or weights changed) rolls the promotion back.
            from scoring.services import scoring_run_start

            rescore = scoring_run_start(
                encoder=model.encoder, reward_model_version=model.version, user=user, enqueue=False
            )
            model_event(
                model,
                "rescore_queued",
                f"scoring run {rescore.pk} re-encodes the pool with {model.encoder}",
                user,
            )
        # Inside the transaction: if the pointer cannot be written, the database change rolls back too.
        active_model_set(
            model=ActiveModel(
                encoder=model.encoder,
                version=model.version,
                checkpoint=str(model.checkpoint),
                checkpoint_sha256=model.checkpoint_sha256,
            ),
            encoder=model.encoder,
        )
        if rescore is not None or action == "rolled_back":
            # From now on the loop trains heads on, scores with and flags by this model's encoder: the
            # fine-tuned one just promoted, or (a person rolling back) the encoder of the model restored.
            loop_encoder_set(encoder=model.encoder)
        if rescore is not None:
            from scoring.tasks import scoring_run_execute

            run_id = rescore.pk
            transaction.on_commit(lambda: scoring_run_execute.delay(run_id))
    return model


def reward_model_rollback(*, user, to_version: int | None = None, encoder: str | None = None) -> RewardModel:
    """Reactivate an earlier model: ``to_version``, or the one active before the current one.

    After a fine-tuned encoder's model was promoted, the base encoder's model is still active for its
    own encoder; rolling back then means pointing the loop at the base encoder again (its features and
    scores are still there), which is what this does when the target is already active for its encoder.
    """
    if to_version is not None:
        target = RewardModel.objects.filter(version=to_version).first()
        if target is None:
            raise RegistryError(f"There is no reward model v{to_version}.")
        encoder = target.encoder
    encoder = encoder or loop_encoder_get()
    current = active_reward_model(encoder)
    if to_version is None:
        earlier = RewardModel.objects.filter(encoder=encoder, promoted_at__isnull=False).exclude(
            status=ModelStatus.ACTIVE
        )
        if current is not None and current.promoted_at is not None:
            earlier = earlier.filter(promoted_at__lt=current.promoted_at)
        target = earlier.order_by("-promoted_at").first()
        base = finetune_base_encoder(current) if current is not None else None
        if target is None and base:
            # The fine-tuned encoder has no earlier model of its own: back to its base encoder's model.
            target = active_reward_model(base)
        if target is None:
            raise RegistryError(f"No earlier active model of {encoder!r} to roll back to.")
    loop_encoder = loop_encoder_get()
    if target.status == ModelStatus.ACTIVE:
        if target.encoder == loop_encoder:
            raise RegistryError(f"Reward model v{target.version} is already active.")
        with transaction.atomic():
            loop_encoder_set(encoder=target.encoder)
            model_event(
                target, "rolled_back", f"the loop goes back from {loop_encoder} to {target.encoder}", user
            )
        return target
    note = f"rolled back from v{current.version}" if current else "rolled back"
    return reward_model_promote(model=target, user=user, note=note, action="rolled_back")


def promotion_comparison(*, model: RewardModel) -> dict | None:
    """How ``model`` compares with the active model of its encoder on the same held-out pairs, from the
    evaluation made when it was trained: ``{"active_version", "accuracy", "active_accuracy", "delta",
    "pairs", "same_pairs"}``; None when there is no other active model to compare with.

    ``same_pairs`` is False when the active model changed since (the numbers then come from different
    evaluations and the page says so).
    """
    active = active_reward_model(model.encoder)
    if active is None or active.pk == model.pk:
        return None
    metrics = model.metrics or {}
    compared = metrics.get("active") or {}
    same = compared.get("version") == active.version and isinstance(compared.get("accuracy"), int | float)
    accuracy = metrics.get("accuracy")
    theirs = compared.get("accuracy") if same else (active.metrics or {}).get("accuracy")
    if not isinstance(accuracy, int | float) or not isinstance(theirs, int | float):
        return {
            "active_version": active.version,
            "accuracy": accuracy,
            "active_accuracy": theirs,
            "delta": None,
            "pairs": metrics.get("n_pairs"),
            "same_pairs": same,
        }
    return {
        "active_version": active.version,
        "accuracy": float(accuracy),
        "active_accuracy": float(theirs),
        "delta": float(accuracy) - float(theirs),
        "pairs": metrics.get("n_pairs"),
        "same_pairs": same,
    }


def rescore_after_activation(*, model: RewardModel, user=None):
    """Queue a scoring run of the whole pool with the model that just became active, so the review
    queue, flags and filters use its rewards. Returns the run (the worker runs it)."""
    from scoring.models import ScoringRun
    from scoring.services import pool_rescore_start

    # Idempotent: promoting a fine-tuned model already queued its re-encoding, and a double click or
    # a retried task must not score the pool twice.
    pending = ScoringRun.objects.filter(
        encoder=model.encoder,
        reward_model_version=model.version,
        status__in=[RunStatus.QUEUED, RunStatus.RUNNING],
    ).first()
    if pending is not None:
        return pending
    # A bulk rescore when the shard pass left features for this encoder identity (no image is read).
    return pool_rescore_start(encoder=model.encoder, reward_model_version=model.version, user=user)


def training_run_create(
    *,
    campaign: Campaign,
    encoder: str | None = None,
    config: TrainConfig | None = None,
    user=None,
    promote_if_better: bool = False,
    finetune: dict | None = None,
) -> TrainingRun:
    """Queue a training run and enqueue its task once the row is committed.

    ``finetune`` (mode, blocks, towers, epochs, ...: ``training.finetune_config.FinetuneConfig`` fields)
    makes it a fine-tune of ``encoder`` instead of frozen heads; a bad request raises ``FinetuneError``
    with the reason before anything is queued."""
    from training.tasks import training_run_execute

    config = config or TrainConfig()
    encoder = encoder or loop_encoder_get()
    params = {"config": asdict(config), "promote_if_better": promote_if_better}
    total = config.epochs
    if finetune is not None:
        params["finetune"] = finetune_params_check(finetune, base_encoder=encoder)
        total = params["finetune"].get("epochs", FinetuneConfig.epochs)
    run = TrainingRun.objects.create(
        campaign=campaign, encoder=encoder, created_by=user, total=total, params=params
    )
    transaction.on_commit(lambda: training_run_execute.delay(run.pk))
    return run


def training_run_cancel(*, run: TrainingRun) -> bool:
    """Stop a training run: the worker stops before its next epoch and registers no model. False when
    the run had already finished (a model registered before the cancel stays a candidate)."""
    return bool(
        TrainingRun.objects.filter(pk=run.pk, status__in=(RunStatus.QUEUED, RunStatus.RUNNING)).update(
            status=RunStatus.CANCELLED, finished_at=timezone.now()
        )
    )
