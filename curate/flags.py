"""Flags: pairs a curator should look at, refreshed after each scoring.

Six reasons (``curate.models.FlagReason``): low reward, reward/CLIPScore disagreement, near-duplicate
clusters, low annotator agreement, captions the encoder truncated, and pairs a multimodal judge scored
low on image-text matching (its latest weights; the details say whether the reward model agreed). Each flag is upserted on
(caption, reason) with the scores behind it in ``details``; a flag whose condition no longer holds is
closed (``is_open=False``), never deleted, so the review history keeps its context.

Pools reach millions of rows, so each reason selects its rows in SQL and only the flagged rows (a small
share) are streamed back, in batches, for the upsert. Closing is one UPDATE per reason: every flag this
refresh touched carries ``updated_at >= started``, so anything older of that reason is stale.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator

from django.db.models import F, FloatField, Func, OuterRef, Subquery, Window
from django.db.models.functions import PercentRank
from django.utils import timezone

from annotate.agreement import mean_pairwise_tau
from annotate.models import Judgment
from curate.models import Flag, FlagReason
from pool.models import Caption, CaptionStatus, ImageStatus
from scoring.models import VlmScore
from scoring.selectors import model_scores

BATCH = 2000
# Rank percentiles of reward and CLIPScore further apart than this (0..1) count as strong disagreement:
# e.g. the reward model puts a pair in its top 20% while CLIPScore puts it in its bottom 30%.
DEFAULT_DISAGREEMENT_THRESHOLD = 0.5
# Mean pairwise Kendall tau between annotators of a task below this counts as low agreement.
DEFAULT_AGREEMENT_THRESHOLD = 0.2
# A judge's ITM (0-100) below this flags the pair. MLM-Filter's best DataComp filter kept ITM >= 66; a
# flag asks a person to look, so the bar sits lower: only pairs the judge thinks clearly mismatched.
DEFAULT_JUDGE_ITM_BELOW = 40.0


class Abs(Func):
    function = "ABS"
    output_field = FloatField()


def usable_scores(*, encoder: str, reward_model_version: int):
    """Scores of usable pairs (image ok, caption ok) for one (encoder, reward model version), of the
    weights currently in view (``scoring.selectors.score_weights_current``)."""
    return model_scores(encoder=encoder, reward_model_version=reward_model_version).filter(
        caption__status=CaptionStatus.OK,
        caption__image__status=ImageStatus.OK,
    )


def _batched(rows: Iterable, size: int = BATCH) -> Iterator[list]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _upsert(reason: str, rows: Iterable[tuple[int, dict]]) -> int:
    count = 0
    for batch in _batched(rows):
        now = timezone.now()
        Flag.objects.bulk_create(
            [
                Flag(caption_id=cid, reason=reason, details=details, is_open=True, updated_at=now)
                for cid, details in batch
            ],
            update_conflicts=True,
            unique_fields=["caption", "reason"],
            update_fields=["details", "is_open", "updated_at"],
        )
        count += len(batch)
    return count


def _close_stale(reason: str, started) -> int:
    return Flag.objects.filter(reason=reason, is_open=True, updated_at__lt=started).update(
        is_open=False, updated_at=timezone.now()
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 5)


def _score_details(encoder: str, reward_model_version: int, reward, clipscore, cosine) -> dict:
    """What every score-based flag records: the model it came from and the pair's scores."""
    return {
        "encoder": encoder,
        "reward_model_version": reward_model_version,
        "reward": _round(reward),
        "clipscore": _round(clipscore),
        "cosine": _round(cosine),
    }


def low_reward_rows(*, encoder: str, reward_model_version: int, share: float) -> Iterator[tuple[int, dict]]:
    scored = usable_scores(encoder=encoder, reward_model_version=reward_model_version).filter(
        reward__isnull=False
    )
    total = scored.count()
    flagged = math.ceil(total * share) if total else 0
    if not flagged:
        return
    rows = scored.order_by("reward", "caption_id").values_list("caption_id", "reward", "clipscore", "cosine")[
        :flagged
    ]
    for rank, (cid, reward, clipscore, cosine) in enumerate(rows.iterator(chunk_size=BATCH)):
        yield (
            cid,
            {
                **_score_details(encoder, reward_model_version, reward, clipscore, cosine),
                "reward_percentile": round(rank / total, 4),
                "bottom_share": share,
            },
        )


def disagreement_rows(
    *, encoder: str, reward_model_version: int, threshold: float
) -> Iterator[tuple[int, dict]]:
    scored = usable_scores(encoder=encoder, reward_model_version=reward_model_version).filter(
        reward__isnull=False, cosine__isnull=False
    )
    # Percentile ranks in SQL (window functions on PostgreSQL and SQLite >= 3.25): the two scores live
    # on different scales, so only their ranks can be compared.
    ranked = scored.annotate(
        reward_pct=Window(PercentRank(), order_by=F("reward").asc()),
        clip_pct=Window(PercentRank(), order_by=F("cosine").asc()),
    ).annotate(gap=Abs(F("reward_pct") - F("clip_pct")))
    rows = ranked.filter(gap__gt=threshold).values_list(
        "caption_id", "reward", "clipscore", "cosine", "reward_pct", "clip_pct"
    )
    for cid, reward, clipscore, cosine, reward_pct, clip_pct in rows.iterator(chunk_size=BATCH):
        yield (
            cid,
            {
                **_score_details(encoder, reward_model_version, reward, clipscore, cosine),
                "reward_percentile": round(reward_pct, 4),
                "clipscore_percentile": round(clip_pct, 4),
                "gap": round(abs(reward_pct - clip_pct), 4),
                "threshold": threshold,
            },
        )


def truncated_rows(*, encoder: str, reward_model_version: int) -> Iterator[tuple[int, dict]]:
    rows = (
        usable_scores(encoder=encoder, reward_model_version=reward_model_version)
        .filter(truncated=True)
        .values_list("caption_id", "reward", "clipscore", "cosine")
    )
    for cid, reward, clipscore, cosine in rows.iterator(chunk_size=BATCH):
        yield (
            cid,
            {
                **_score_details(encoder, reward_model_version, reward, clipscore, cosine),
                "note": "the encoder saw only the start of this caption, so its scores judge a prefix",
            },
        )


def near_duplicate_rows() -> Iterator[tuple[int, dict]]:
    """Captions of near-duplicate images and of the image each was kept in favour of."""
    rows = (
        Caption.objects.filter(image__status=ImageStatus.NEAR_DUPLICATE, image__duplicate_of__isnull=False)
        .order_by("image__duplicate_of_id", "image_id", "id")
        .values_list("id", "image_id", "image__duplicate_of_id", "image__status_reason")
    )
    seen_kept: set[int] = set()
    for kept_id, group in itertools.groupby(rows.iterator(chunk_size=BATCH), key=lambda row: row[2]):
        members = list(group)
        duplicate_ids = sorted({row[1] for row in members})
        for cid, image_id, _, why in members:
            yield (
                cid,
                {"role": "duplicate", "image_id": image_id, "kept_image_id": kept_id, "reason": why},
            )
        if kept_id not in seen_kept:
            seen_kept.add(kept_id)
            for cid in Caption.objects.filter(image_id=kept_id).values_list("id", flat=True):
                yield (
                    cid,
                    {"role": "kept", "image_id": kept_id, "duplicate_image_ids": duplicate_ids[:50]},
                )


def low_agreement_rows(*, threshold: float) -> Iterator[tuple[int, dict]]:
    """Captions of tasks whose annotators' rankings agree poorly (mean pairwise Kendall tau)."""
    rows = Judgment.objects.order_by("task_id", "id").values_list("task_id", "user_id", "ranking")
    worst: dict[int, dict] = {}
    for task_id, group in itertools.groupby(rows.iterator(chunk_size=BATCH), key=lambda row: row[0]):
        rankings = [ranking for _, _, ranking in group]
        if len(rankings) < 2:
            continue
        mean_tau = mean_pairwise_tau(rankings)
        if math.isnan(mean_tau) or mean_tau >= threshold:
            continue
        captions = {int(cid) for ranking in rankings for tier in ranking for cid in tier}
        for cid in captions:
            # A caption in several tasks is flagged once, with its worst task.
            if cid not in worst or mean_tau < worst[cid]["mean_kendall_tau"]:
                worst[cid] = {
                    "task_id": task_id,
                    "annotators": len(rankings),
                    "mean_kendall_tau": round(mean_tau, 4),
                    "threshold": threshold,
                }
    yield from worst.items()


def low_judge_rows(
    *, encoder: str, reward_model_version: int, itm_below: float
) -> Iterator[tuple[int, dict]]:
    """Pairs the most recent judge scored below ``itm_below`` on image-text matching, with the reward
    model's view of the same pair when it has one (a high reward there is a disagreement to settle)."""
    latest = (
        VlmScore.objects.exclude(scorer_fingerprint="")
        .order_by("-updated_at")
        .values_list("scorer_fingerprint", "scorer")
        .first()
    )
    if latest is None:
        return
    fingerprint, scorer = latest
    reward = (
        model_scores(encoder=encoder, reward_model_version=reward_model_version)
        .filter(caption=OuterRef("caption"))
        .values("reward")[:1]
    )
    rows = (
        VlmScore.objects.filter(
            scorer_fingerprint=fingerprint,
            error="",
            itm__lt=itm_below,
            caption__status=CaptionStatus.OK,
            caption__image__status=ImageStatus.OK,
        )
        .annotate(reward=Subquery(reward))
        .values_list("caption_id", "itm", "odf", "ctq", "su", "reward")
    )
    for cid, itm, odf, ctq, su, reward in rows.iterator(chunk_size=BATCH):
        yield (
            cid,
            {
                "judge": scorer,
                "judge_fingerprint": fingerprint,
                "itm": _round(itm),
                "odf": _round(odf),
                "ctq": _round(ctq),
                "su": _round(su),
                "itm_below": itm_below,
                "reward": _round(reward),
            },
        )


def flags_refresh(
    *,
    encoder: str,
    reward_model_version: int,
    low_reward_share: float = 0.1,
    disagreement_threshold: float = DEFAULT_DISAGREEMENT_THRESHOLD,
    agreement_threshold: float = DEFAULT_AGREEMENT_THRESHOLD,
    judge_itm_below: float = DEFAULT_JUDGE_ITM_BELOW,
) -> dict[str, dict[str, int]]:
    """Recompute every flag for one scoring (encoder, reward model version); idempotent.

    Returns ``{reason: {"open": n, "closed": m}}``.
    """
    if not 0 <= low_reward_share <= 1:
        raise ValueError(f"low_reward_share must be between 0 and 1, got {low_reward_share}")
    has_reward = reward_model_version > 0
    sources = {
        FlagReason.LOW_REWARD: (
            low_reward_rows(
                encoder=encoder, reward_model_version=reward_model_version, share=low_reward_share
            )
            if has_reward
            else iter(())
        ),
        FlagReason.DISAGREEMENT: (
            disagreement_rows(
                encoder=encoder, reward_model_version=reward_model_version, threshold=disagreement_threshold
            )
            if has_reward
            else iter(())
        ),
        FlagReason.TRUNCATED: truncated_rows(encoder=encoder, reward_model_version=reward_model_version),
        FlagReason.NEAR_DUPLICATE: near_duplicate_rows(),
        FlagReason.LOW_AGREEMENT: low_agreement_rows(threshold=agreement_threshold),
        FlagReason.LOW_JUDGE: low_judge_rows(
            encoder=encoder, reward_model_version=reward_model_version, itm_below=judge_itm_below
        ),
    }
    counts: dict[str, dict[str, int]] = {}
    for reason, rows in sources.items():
        started = timezone.now()
        opened = _upsert(reason, rows)
        counts[str(reason)] = {"open": opened, "closed": _close_stale(reason, started)}
    return counts
