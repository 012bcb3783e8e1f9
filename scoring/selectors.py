"""Reads of the scoring app: runs, score summaries and histograms (one aggregate query, any pool size)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Avg, Count, Max, Min, Q, QuerySet

from pool.models import RunStatus
from scoring.models import Score, ScoringRun


@dataclass(frozen=True)
class ScoreWeights:
    """The exact models behind a set of scores: encoder weights and reward checkpoint."""

    encoder_fingerprint: str
    reward_checkpoint_sha256: str


def score_weights_current(*, encoder: str, reward_model_version: int) -> ScoreWeights:
    """Which weights' scores pages and new filter runs use for (encoder, version): those of the newest
    succeeded scoring run, else of the newest score rows (scores written before runs recorded them).

    A rescore with replaced weights adds rows under a new fingerprint; until it has finished, the
    complete older set stays the one in view.
    """
    run = (
        ScoringRun.objects.filter(
            encoder=encoder, reward_model_version=reward_model_version, status=RunStatus.SUCCEEDED
        )
        .order_by("-finished_at", "-id")
        .values_list("encoder_fingerprint", "reward_checkpoint_sha256")
        .first()
    )
    if run is not None:
        return ScoreWeights(*run)
    fingerprint = (
        Score.objects.filter(encoder=encoder, reward_model_version=reward_model_version)
        .order_by("-id")
        .values_list("encoder_fingerprint", flat=True)
        .first()
    )
    sha = (
        ScoringRun.objects.filter(
            encoder=encoder, reward_model_version=reward_model_version, encoder_fingerprint=fingerprint or ""
        )
        .order_by("-id")
        .values_list("reward_checkpoint_sha256", flat=True)
        .first()
    )
    return ScoreWeights(fingerprint or "", sha or "")


def model_scores(
    *, encoder: str, reward_model_version: int, encoder_fingerprint: str | None = None
) -> QuerySet[Score]:
    """The scores of one model: encoder name, weights fingerprint (None: the current one, see
    ``score_weights_current``) and reward model version. Every reader of scores starts here, so two
    sets of weights behind one name are never mixed."""
    if encoder_fingerprint is None:
        encoder_fingerprint = score_weights_current(
            encoder=encoder, reward_model_version=reward_model_version
        ).encoder_fingerprint
    return Score.objects.filter(
        encoder=encoder, encoder_fingerprint=encoder_fingerprint, reward_model_version=reward_model_version
    )


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
    scores = (
        model_scores(encoder=encoder, reward_model_version=reward_model_version)
        .filter(error="")
        .exclude(**{f"{field}__isnull": True})
    )
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
    scores = model_scores(encoder=encoder, reward_model_version=reward_model_version)
    return scores.aggregate(
        total=Count("id"),
        failed=Count("id", filter=~Q(error="")),
        truncated=Count("id", filter=Q(truncated=True)),
    )


def scoring_run_failures(*, run: ScoringRun, limit: int = 50) -> QuerySet[Score]:
    """Unscorable pairs of the run's model (the reason is in ``error``)."""
    return (
        model_scores(
            encoder=run.encoder,
            reward_model_version=run.reward_model_version,
            encoder_fingerprint=run.encoder_fingerprint,
        )
        .exclude(error="")
        .select_related("caption")
        .order_by("caption_id")[:limit]
    )


def bulk_load_state(*, run: ScoringRun) -> dict | None:
    """Where a bulk rescore's scores are (its load table, ``scoring.score_partitions``), for its page:
    None for a run that writes into ``scoring_score`` directly."""
    params = run.params or {}
    table = params.get("load_table")
    if not table:
        return None
    finished = params.get("load_finished")
    if finished:
        state = "attached" if finished == "attached" else "merged" if finished == "merged" else "gone"
    elif params.get("finishing_since") and run.status == RunStatus.RUNNING:
        state = "finishing"
    elif run.chunks_total and run.chunks_done >= run.chunks_total and run.status == RunStatus.RUNNING:
        state = "waiting"  # every chunk done, the finish not started (its worker died): resume finishes it
    else:
        state = "loading"
    return {
        "table": table,
        "state": state,
        "since": params.get("finishing_since"),
        "seconds": params.get("finish_seconds"),
        "steps": params.get("finish_steps") or {},
    }
