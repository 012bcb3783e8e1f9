"""Judge runs: MLM-Filter's four metrics from a multimodal judge (``vlm:<dir>``) over a band of the pool.

A judge costs hundreds of times more per pair than CLIPScore, so a run targets a band instead of the
whole pool (the cascade): the pairs whose reward (or CLIPScore) lies between two percentiles of a
scoring, e.g. the middle 20% where a cheap score is least sure; or an explicit list of captions (the
active-learning candidates, a filter run's borderline). The band is resolved to two score values when
the run starts, so every chunk scores the same pairs however long the run takes.

A judge run is a ``ScoringRun`` whose ``encoder`` is the judge's name: it reuses the chunks, progress,
cancel, resume and idempotent upserts of scoring runs; its chunks write ``VlmScore`` rows
(``scoring.vlm_inference``). No ML here: pages and the API start runs from this module.
"""

from __future__ import annotations

from django.db import transaction

from scoring.encoder_names import vlm_name_check
from scoring.models import ScoringRun
from scoring.selectors import model_scores, score_weights_current

BAND_FIELDS = ("reward", "clipscore")
# Pairs per chunk: a judge reads a few pairs a second on CPU and hundreds on a GPU; small chunks keep
# a killed worker's loss and the progress bar's steps small.
DEFAULT_CHUNK = 64


def score_at_percentile(
    *, encoder: str, reward_model_version: int, field: str, percentile: float
) -> float | None:
    """The ``field`` value at ``percentile`` (0-100) of a scoring, by ORDER BY + OFFSET on its index."""
    scored = model_scores(encoder=encoder, reward_model_version=reward_model_version).filter(
        **{f"{field}__isnull": False}
    )
    total = scored.count()
    if not total:
        return None
    offset = min(total - 1, max(0, int(round(percentile / 100 * (total - 1)))))
    return scored.order_by(field).values_list(field, flat=True)[offset]


def vlm_band_resolve(
    *, encoder: str, reward_model_version: int, field: str = "reward", low_percent: float, high_percent: float
) -> dict:
    """Fix a band of a scoring as two values; ``ValueError`` with the reason when it cannot be."""
    if field not in BAND_FIELDS:
        raise ValueError(f"A band is over one of {', '.join(BAND_FIELDS)}, not {field!r}.")
    if not 0 <= low_percent < high_percent <= 100:
        raise ValueError(
            f"Band percentiles must satisfy 0 <= low < high <= 100 (got {low_percent}, {high_percent})."
        )
    if field == "reward" and not reward_model_version:
        raise ValueError("A reward band needs a reward model: train and promote one, or band on clipscore.")
    low = score_at_percentile(
        encoder=encoder, reward_model_version=reward_model_version, field=field, percentile=low_percent
    )
    high = score_at_percentile(
        encoder=encoder, reward_model_version=reward_model_version, field=field, percentile=high_percent
    )
    if low is None or high is None:
        raise ValueError(
            f"No {field} scores of {encoder!r} (reward model v{reward_model_version}) to take a band of: "
            "run score_pool first."
        )
    return {
        "encoder": encoder,
        # The band is over these weights' scores; a later scoring with replaced weights does not move it.
        "encoder_fingerprint": score_weights_current(
            encoder=encoder, reward_model_version=reward_model_version
        ).encoder_fingerprint,
        "reward_model_version": reward_model_version,
        "field": field,
        "low_percent": low_percent,
        "high_percent": high_percent,
        "low": low,
        "high": high,
    }


def vlm_run_start(
    *,
    scorer: str,
    band: dict | None = None,
    caption_ids: list[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    user=None,
    enqueue: bool = True,
) -> ScoringRun:
    """Queue a judge run over ``band`` (from ``vlm_band_resolve``) or ``caption_ids``; one is needed,
    because a judge over the whole pool is rarely what anyone can afford."""
    vlm_name_check(scorer)
    if band is None and caption_ids is None:
        raise ValueError("A judge run needs a band of a scoring or a list of captions (the cascade).")
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1.")
    params: dict = {"kind": "vlm"}
    if band is not None:
        params["band"] = band
    if caption_ids is not None:
        params["caption_ids"] = sorted({int(i) for i in caption_ids})
    run = ScoringRun.objects.create(
        encoder=scorer,
        reward_model_version=0,
        chunk_size=chunk_size,
        params=params,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    if enqueue:
        from scoring.tasks import scoring_run_execute

        transaction.on_commit(lambda: scoring_run_execute.delay(run.pk))
    return run
