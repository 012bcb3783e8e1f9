"""Reads for the review queue and the audit trail."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Exists, Max, OuterRef, QuerySet

from curate.models import Flag, FlagReason, Review
from curate.rewrite import rewrite_suggestion_get
from pool.models import Caption
from scoring.models import Score
from scoring.selectors import model_scores, score_weights_current

SCORE_FIELDS = ("reward", "clipscore", "cosine")


@dataclass(frozen=True)
class ScoreContext:
    encoder: str
    reward_model_version: int
    # The weights of the scores in view (``scoring.selectors.score_weights_current``).
    encoder_fingerprint: str = ""
    reward_checkpoint_sha256: str = ""

    def scores(self) -> QuerySet[Score]:
        return model_scores(
            encoder=self.encoder,
            reward_model_version=self.reward_model_version,
            encoder_fingerprint=self.encoder_fingerprint,
        )


def score_context_default(
    *, encoder: str | None = None, reward_model_version: int | None = None
) -> ScoreContext:
    """Which scores the curator sees: the requested ones, else the active model's, else the newest."""
    encoder = encoder or settings.LOUPE_DEFAULT_ENCODER
    if not Score.objects.filter(encoder=encoder).exists():
        encoder = Score.objects.order_by("-id").values_list("encoder", flat=True).first() or encoder
    if reward_model_version is None:
        from scoring.active_model import active_model_get

        active = active_model_get(encoder=encoder)
        if active and Score.objects.filter(encoder=encoder, reward_model_version=active.version).exists():
            reward_model_version = active.version
        else:
            reward_model_version = (
                Score.objects.filter(encoder=encoder).aggregate(v=Max("reward_model_version"))["v"] or 0
            )
    weights = score_weights_current(encoder=encoder, reward_model_version=int(reward_model_version))
    return ScoreContext(
        encoder=encoder,
        reward_model_version=int(reward_model_version),
        encoder_fingerprint=weights.encoder_fingerprint,
        reward_checkpoint_sha256=weights.reward_checkpoint_sha256,
    )


@dataclass
class QueueFilters:
    reason: str = ""
    source: str = ""
    score: str = "reward"  # which score the range applies to: reward, clipscore or cosine
    score_min: float | None = None
    score_max: float | None = None
    state: str = "undecided"  # undecided, decided or all


def review_queue(*, filters: QueueFilters, context: ScoreContext) -> QuerySet[Caption]:
    """Flagged captions matching the filters, oldest first. Uses EXISTS so no join multiplies rows."""
    flags = Flag.objects.filter(caption=OuterRef("pk"), is_open=True)
    if filters.reason:
        flags = flags.filter(reason=filters.reason)
    queryset = Caption.objects.filter(Exists(flags))
    if filters.state == "undecided":
        queryset = queryset.filter(decision="")
    elif filters.state == "decided":
        queryset = queryset.exclude(decision="")
    if filters.source:
        queryset = queryset.filter(source=filters.source)
    if filters.score_min is not None or filters.score_max is not None:
        score_field = filters.score if filters.score in SCORE_FIELDS else "reward"
        scores = context.scores().filter(caption=OuterRef("pk"))
        if filters.score_min is not None:
            scores = scores.filter(**{f"{score_field}__gte": filters.score_min})
        if filters.score_max is not None:
            scores = scores.filter(**{f"{score_field}__lte": filters.score_max})
        queryset = queryset.filter(Exists(scores))
    return queryset.select_related("image").order_by("id")


@dataclass
class CaptionView:
    caption: Caption
    score: dict | None
    is_flagged_one: bool = False


def flag_summary(flag: Flag) -> str:
    """The numbers behind a flag, in a few words."""
    d = flag.details or {}

    def num(key: str) -> str:
        value = d.get(key)
        return "–" if value is None else f"{value:.3g}"

    if flag.reason == FlagReason.LOW_REWARD:
        return f"reward {num('reward')}, bottom {100 * float(d.get('bottom_share', 0)):.0f}%"
    if flag.reason == FlagReason.DISAGREEMENT:
        return (
            f"reward pct {num('reward_percentile')} vs CLIPScore pct {num('clipscore_percentile')} "
            f"(gap {num('gap')})"
        )
    if flag.reason == FlagReason.NEAR_DUPLICATE:
        if d.get("role") == "kept":
            return f"kept image of a cluster with {len(d.get('duplicate_image_ids', []))} near duplicate(s)"
        return f"near duplicate of image {d.get('kept_image_id')}"
    if flag.reason == FlagReason.LOW_AGREEMENT:
        return f"task {d.get('task_id')}: mean Kendall tau {num('mean_kendall_tau')} over {d.get('annotators')} annotators"
    if flag.reason == FlagReason.TRUNCATED:
        return "longer than the text encoder's context"
    if flag.reason == FlagReason.LOW_JUDGE:
        line = f"judge ITM {num('itm')} (ODF {num('odf')}, CTQ {num('ctq')}, SU {num('su')})"
        return line + (f", reward {num('reward')}" if d.get("reward") is not None else "")
    return ""


@dataclass
class QueueItem:
    caption: Caption
    flags: list[Flag]
    captions: list[CaptionView] = field(default_factory=list)
    suggestion: dict | None = None

    @property
    def flag_rows(self) -> list[tuple[Flag, str]]:
        return [(flag, flag_summary(flag)) for flag in self.flags]

    @property
    def image(self):
        return self.caption.image


def review_items(*, captions: list[Caption], context: ScoreContext) -> list[QueueItem]:
    """For one page of the queue: each flagged caption with its image's captions and their scores."""
    if not captions:
        return []
    image_ids = {c.image_id for c in captions}
    siblings: dict[int, list[Caption]] = {}
    for sibling in Caption.objects.filter(image_id__in=image_ids).order_by("id"):
        siblings.setdefault(sibling.image_id, []).append(sibling)
    scores = {
        row["caption_id"]: row
        for row in context.scores()
        .filter(caption__image_id__in=image_ids)
        .values("caption_id", "reward", "clipscore", "cosine", "criteria", "truncated", "uncertainty")
    }
    flags: dict[int, list[Flag]] = {}
    for flag in Flag.objects.filter(caption__in=captions, is_open=True).order_by("reason"):
        flags.setdefault(flag.caption_id, []).append(flag)
    items = []
    for caption in captions:
        item = QueueItem(
            caption=caption,
            flags=flags.get(caption.id, []),
            suggestion=rewrite_suggestion_get(caption_id=caption.id),
        )
        for sibling in siblings.get(caption.image_id, []):
            item.captions.append(
                CaptionView(
                    caption=sibling, score=scores.get(sibling.id), is_flagged_one=sibling.id == caption.id
                )
            )
        items.append(item)
    return items


def review_counts_by_reason() -> dict[str, int]:
    """Open flags on undecided captions per reason, for the filter bar."""
    counts = {reason.value: 0 for reason in FlagReason}
    rows = (
        Flag.objects.filter(is_open=True, caption__decision="")
        .values_list("reason")
        .order_by()
        .annotate(n=Count("id"))
    )
    for reason, n in rows:
        counts[reason] = n
    return counts


def review_audit(*, curator: str = "", decision: str = "") -> QuerySet[Review]:
    queryset = Review.objects.select_related("reviewer", "caption", "caption__image", "rewritten_caption")
    if curator:
        queryset = queryset.filter(reviewer__username=curator)
    if decision:
        queryset = queryset.filter(decision=decision)
    return queryset.order_by("-created_at", "-id")
