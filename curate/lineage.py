"""Lineage for export manifests: the exact models behind a subset, and the judgments behind the models.

A filter run records the encoder's weights fingerprint and the reward checkpoint's sha256 of the scores
it was computed from; the reward model's registry row records the campaign and the judgments it was
trained on (count, newest id, sha256 over their ids, rankings and ratings). An export's manifest copies
all of it, so a subset can be traced to the models and the people's judgments that chose it.
"""

from __future__ import annotations

from django.db.models import Count, Max

from annotate.models import Campaign, Judgment
from curate.models import FilterRun
from scoring.encoder_names import encoder_name_public
from scoring.models import VlmScore
from training.models import RewardModel


def reward_model_lineage(*, version: int, checkpoint_sha256: str = "") -> dict | None:
    """The registry's record of reward model ``version`` (None for CLIPScore only, version 0)."""
    if not version:
        return None
    model = RewardModel.objects.select_related("campaign").filter(version=version).first()
    if model is None:
        return {"version": version, "note": "not in this registry (deleted, or trained elsewhere)"}
    lineage = {
        "version": model.version,
        "status": model.status,
        "checkpoint_sha256": model.checkpoint_sha256,
        "trained_on_encoder": encoder_name_public(model.encoder),
        "trained_on_encoder_fingerprint": model.encoder_fingerprint,
        "trained_at": model.created_at.isoformat(),
        "campaign": (
            {"id": model.campaign_id, "name": model.campaign.name} if model.campaign is not None else None
        ),
        "judgments": (model.config or {}).get("judgments")
        or {"count": model.n_judgments, "pairs": model.n_pairs},
        "held_out_accuracy": (model.metrics or {}).get("accuracy"),
        "clipscore_accuracy": (model.metrics or {}).get("clipscore_accuracy"),
    }
    if checkpoint_sha256 and model.checkpoint_sha256 and checkpoint_sha256 != model.checkpoint_sha256:
        lineage["warning"] = (
            f"the scores were computed with checkpoint sha256 {checkpoint_sha256}, not the registry's"
        )
    return lineage


def filter_run_lineage(run: FilterRun) -> dict:
    """The models behind a filter run's scores, for the manifest's ``models`` block."""
    return {
        "encoder": encoder_name_public(run.encoder),
        "encoder_fingerprint": run.encoder_fingerprint,
        "reward_model_version": run.reward_model_version,
        "reward_checkpoint_sha256": run.reward_checkpoint_sha256,
        "reward_model": reward_model_lineage(
            version=run.reward_model_version, checkpoint_sha256=run.reward_checkpoint_sha256
        ),
        "judge": judge_lineage(run),
    }


def judge_lineage(run: FilterRun) -> dict | None:
    """The multimodal judge whose metrics the export carries (and, when the rule used it, its bars)."""
    from curate.exports import export_judge_identity

    identity = export_judge_identity(run)
    if not identity:
        return None
    judged = VlmScore.objects.filter(scorer_fingerprint=identity)
    name = judged.values_list("scorer", flat=True).first() or ""
    rule = run.rule or {}
    return {
        "name": encoder_name_public(name),
        "identity": identity,
        "pairs_judged": judged.count(),
        "used_by_rule": bool(rule.get("vlm_min")),
        "thresholds": rule.get("vlm_min") or {},
        "unjudged": rule.get("vlm_unjudged", "drop") if rule.get("vlm_min") else None,
    }


def campaign_lineage(campaign: Campaign) -> dict:
    """What a judgment export covers, and the reward models trained on the same campaign."""
    judgments = Judgment.objects.filter(task__campaign=campaign).aggregate(
        n=Count("id"),
        last_id=Max("id"),
        annotators=Count("user", distinct=True),
        tasks=Count("task", distinct=True),
    )
    models = RewardModel.objects.filter(campaign=campaign).order_by("version")
    return {
        "campaign": {"id": campaign.pk, "name": campaign.name, "criteria": campaign.criterion_keys},
        "judgments": {
            "count": judgments["n"],
            "last_judgment_id": judgments["last_id"],
            "annotators": judgments["annotators"],
            "tasks": judgments["tasks"],
        },
        "reward_models_trained_on_this_campaign": [
            {
                "version": m.version,
                "status": m.status,
                "encoder": encoder_name_public(m.encoder),
                "encoder_fingerprint": m.encoder_fingerprint,
                "checkpoint_sha256": m.checkpoint_sha256,
                "judgments": (m.config or {}).get("judgments") or {"count": m.n_judgments},
            }
            for m in models
        ],
    }
