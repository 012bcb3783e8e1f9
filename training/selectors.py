"""Reads of the training app: the registry, its events and runs, and the figures the pages chart."""

from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet

from training.models import ModelEvent, ModelStatus, RewardModel, TrainingRun


def retrain_thresholds() -> dict:
    """The two retraining thresholds (settings), for the pages that show them side by side: the fewest
    judgments a model is trained on, and how many new ones make the schedule retrain a campaign."""
    return {
        "min_judgments": int(getattr(settings, "LOUPE_REWARD_MIN_JUDGMENTS", 30)),
        "retrain_after": max(1, int(getattr(settings, "LOUPE_RETRAIN_AFTER_JUDGMENTS", 50))),
    }


def reward_models_list(*, limit: int = 200) -> QuerySet[RewardModel]:
    return RewardModel.objects.select_related("campaign").order_by("-version")[:limit]


def reward_model_get(*, version: int) -> RewardModel | None:
    return RewardModel.objects.select_related("campaign").filter(version=version).first()


def reward_model_active(*, encoder: str) -> RewardModel | None:
    return RewardModel.objects.filter(encoder=encoder, status=ModelStatus.ACTIVE).first()


def model_events_recent(*, model: RewardModel | None = None, limit: int = 50) -> QuerySet[ModelEvent]:
    events = ModelEvent.objects.select_related("model", "user").order_by("-created_at", "-id")
    if model is not None:
        events = events.filter(model=model)
    return events[:limit]


def training_runs_recent(*, limit: int = 20) -> QuerySet[TrainingRun]:
    return TrainingRun.objects.select_related("campaign", "model").order_by("-created_at", "-id")[:limit]


def accuracy_series(models) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Accuracy by model version and by number of judgments, with CLIPScore and the human ceiling
    measured on each model's own held-out pairs."""
    by_version: dict[str, list[tuple[float, float]]] = {
        "reward model": [],
        "CLIPScore": [],
        "human ceiling": [],
    }
    by_judgments: dict[str, list[tuple[float, float]]] = {
        "reward model": [],
        "CLIPScore": [],
        "human ceiling": [],
    }
    for model in sorted(models, key=lambda m: m.version):
        m = model.metrics or {}
        for name, key in (
            ("reward model", "accuracy"),
            ("CLIPScore", "clipscore_accuracy"),
            ("human ceiling", "human_ceiling"),
        ):
            value = m.get(key)
            if isinstance(value, int | float):
                by_version[name].append((model.version, float(value)))
                by_judgments[name].append((model.n_judgments, float(value)))
    drop = [name for name, points in by_version.items() if not points]
    for name in drop:
        by_version.pop(name)
        by_judgments.pop(name)
    return {"by_version": by_version, "by_judgments": by_judgments}
