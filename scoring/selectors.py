"""Reads of the scoring app: runs, score summaries and histograms (one aggregate query, any pool size)."""

from __future__ import annotations

from django.db.models import Avg, Count, Max, Min, Q, QuerySet

from scoring.models import Score, ScoringRun


def scoring_runs(*, limit: int = 50) -> QuerySet[ScoringRun]:
    return ScoringRun.objects.select_related("created_by").order_by("-created_at", "-id")[:limit]


def score_models() -> list[tuple[str, int]]:
    """The (encoder, reward model version) pairs that have scores, most recent run first."""
    seen: list[tuple[str, int]] = []
    for key in ScoringRun.objects.order_by("-id").values_list("encoder", "reward_model_version")[:200]:
        if key not in seen:
            seen.append(key)
    return seen


def score_histogram(*, encoder: str, reward_model_version: int, field: str, bins: int = 20) -> dict:
    """{"counts", "edges", "n", "mean"} of one score column, or counts=[] when nothing is scored."""
    if field not in {"clipscore", "reward", "uncertainty", "cosine"}:
        raise ValueError(f"no histogram of {field!r}")
    scores = Score.objects.filter(
        encoder=encoder, reward_model_version=reward_model_version, error=""
    ).exclude(**{f"{field}__isnull": True})
    stats = scores.aggregate(lo=Min(field), hi=Max(field), n=Count("id"), mean=Avg(field))
    if not stats["n"]:
        return {"counts": [], "edges": [], "n": 0, "mean": None}
    lo, hi = float(stats["lo"]), float(stats["hi"])
    if hi <= lo:
        hi = lo + 1e-6
    width = (hi - lo) / bins
    edges = [lo + i * width for i in range(bins + 1)]
    conditions = {}
    for i in range(bins):
        cond = Q(**{f"{field}__gte": edges[i]})
        if i < bins - 1:
            cond &= Q(**{f"{field}__lt": edges[i + 1]})
        conditions[f"b{i}"] = Count("id", filter=cond)
    counts = scores.aggregate(**conditions)
    return {
        "counts": [counts[f"b{i}"] for i in range(bins)],
        "edges": edges,
        "n": stats["n"],
        "mean": stats["mean"],
    }


def score_summary(*, encoder: str, reward_model_version: int) -> dict:
    scores = Score.objects.filter(encoder=encoder, reward_model_version=reward_model_version)
    return scores.aggregate(
        total=Count("id"),
        failed=Count("id", filter=~Q(error="")),
        truncated=Count("id", filter=Q(truncated=True)),
    )


def scoring_run_failures(*, run: ScoringRun, limit: int = 50) -> QuerySet[Score]:
    """Unscorable pairs of the run's model (the reason is in ``error``)."""
    return (
        Score.objects.filter(encoder=run.encoder, reward_model_version=run.reward_model_version)
        .exclude(error="")
        .select_related("caption")
        .order_by("caption_id")[:limit]
    )
