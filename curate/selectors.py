"""Reads for the review queue and the audit trail."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.db.models import Count, Exists, Max, OuterRef, QuerySet

from curate.models import Flag, FlagReason, Review
from curate.rewrite import rewrite_suggestion_get
from pool.models import Caption, RunStatus
from scoring.models import Score, ScoringRun
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
            # The newest version a scoring run finished (a few run rows), else the newest among the
            # scores (a MAX over every score of the encoder: only pools scored before runs existed).
            reward_model_version = ScoringRun.objects.filter(
                encoder=encoder, status=RunStatus.SUCCEEDED
            ).aggregate(v=Max("reward_model_version"))["v"]
            if reward_model_version is None:
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


def score_encoders(*, limit: int = 20) -> list[str]:
    """The encoders that have scores. On PostgreSQL a loose index scan (one index probe per distinct
    encoder on the score indexes that lead with it) instead of a DISTINCT over every score row."""
    if connection.vendor != "postgresql":
        return list(Score.objects.order_by("encoder").values_list("encoder", flat=True).distinct()[:limit])
    table = Score._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH RECURSIVE e(v) AS (SELECT min(encoder) FROM {table} UNION ALL "
            f"SELECT (SELECT min(encoder) FROM {table} WHERE encoder > e.v) FROM e WHERE e.v IS NOT NULL) "
            "SELECT v FROM e WHERE v IS NOT NULL LIMIT %s",
            [limit],
        )
        return [row[0] for row in cursor.fetchall()]


# Pages count what they list only up to here ("1,000+"): an exact COUNT of a big flagged queue or audit
# log on every page view is what keeps a 10M-pair pool's pages slow.
COUNT_CAP = 1_000


@dataclass
class KeysetPage:
    """A page of rows by primary key (keyset: ``?after=`` / ``?before=`` the edge ids), no OFFSET and
    no COUNT. ``count``: rows matching, capped at ``COUNT_CAP`` (``count_capped`` says so)."""

    object_list: list
    next_after: int | None
    prev_before: int | None
    count: int
    count_capped: bool

    def __iter__(self):
        return iter(self.object_list)

    def __len__(self) -> int:
        return len(self.object_list)

    @property
    def has_next(self) -> bool:
        return self.next_after is not None

    @property
    def has_previous(self) -> bool:
        return self.prev_before is not None

    @property
    def has_other_pages(self) -> bool:
        return self.has_next or self.has_previous


def keyset_page(
    queryset: QuerySet, *, after: int | None, before: int | None, limit: int, descending: bool = False
) -> KeysetPage:
    """``queryset`` ordered by pk (ascending, or newest first with ``descending``), the page after or
    before a pk. The ids in the links are the edges of this page."""
    forward, backward = ("-pk", "pk") if descending else ("pk", "-pk")
    newer = "pk__gt" if not descending else "pk__lt"
    older = "pk__lt" if not descending else "pk__gt"
    if before is not None:
        rows = list(queryset.filter(**{older: before}).order_by(backward)[: limit + 1])
        more_before = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        next_after = rows[-1].pk if rows else None
        prev_before = rows[0].pk if rows and more_before else None
    else:
        queryset_page = queryset.filter(**{newer: after}) if after is not None else queryset
        rows = list(queryset_page.order_by(forward)[: limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        next_after = rows[-1].pk if rows and more else None
        prev_before = rows[0].pk if rows and after is not None else None
    count = queryset.order_by()[: COUNT_CAP + 1].count()
    return KeysetPage(
        object_list=rows,
        next_after=next_after,
        prev_before=prev_before,
        count=min(count, COUNT_CAP),
        count_capped=count > COUNT_CAP,
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
    """Flagged captions matching the filters, oldest first. Uses EXISTS so no join multiplies rows.

    Near-duplicate flags are reviewed one cluster at a time (``near_duplicate_clusters``): a caption
    whose only open flag is a near-duplicate one is not an item of its own here.
    """
    flags = Flag.objects.filter(caption=OuterRef("pk"), is_open=True)
    if filters.reason:
        flags = flags.filter(reason=filters.reason)
    else:
        flags = flags.exclude(reason=FlagReason.NEAR_DUPLICATE)
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
    """Open flags on undecided captions per reason, for the filter bar; near duplicates count clusters."""
    counts = {reason.value: 0 for reason in FlagReason}
    # All open flags per reason (the flag table alone), less those on decided captions (few, from the
    # decision index): joining every open flag to its caption costs a quarter second at 10M pairs.
    open_flags = Flag.objects.filter(is_open=True).exclude(reason=FlagReason.NEAR_DUPLICATE)
    for sign, flags in ((1, open_flags), (-1, open_flags.filter(caption__decision__gt=""))):
        for reason, n in flags.values_list("reason").order_by().annotate(n=Count("id")):
            counts[reason] += sign * n
    counts[FlagReason.NEAR_DUPLICATE.value] = near_duplicate_clusters(state="undecided").count()
    return counts


# --- near-duplicate clusters: one item per kept image ---------------------------------------------


def near_duplicate_clusters(*, state: str = "undecided") -> QuerySet:
    """Kept images of near-duplicate clusters whose duplicates carry open flags, oldest first.

    A cluster is undecided while a caption of one of its duplicate images is undecided.
    """
    from pool.models import Image

    flagged = Flag.objects.filter(
        reason=FlagReason.NEAR_DUPLICATE, is_open=True, caption__image__duplicate_of=OuterRef("pk")
    )
    undecided = flagged.filter(caption__decision="")
    queryset = Image.objects.filter(Exists(flagged))
    if state == "undecided":
        queryset = queryset.filter(Exists(undecided))
    elif state == "decided":
        queryset = queryset.exclude(Exists(undecided))
    return queryset.order_by("id")


@dataclass
class ClusterImage:
    image: object
    captions: list[Caption]
    is_kept: bool


@dataclass
class ClusterItem:
    kept: ClusterImage
    duplicates: list[ClusterImage]

    @property
    def pk(self) -> int:
        return self.kept.image.pk

    @property
    def undecided_duplicate_captions(self) -> list[Caption]:
        return [c for d in self.duplicates for c in d.captions if not c.decision]

    @property
    def images(self) -> list[ClusterImage]:
        return [self.kept, *self.duplicates]


def cluster_items(*, kept_images: list) -> list[ClusterItem]:
    """For one page of clusters: the kept image and its near duplicates, each with its captions."""
    from pool.models import Image, ImageStatus

    if not kept_images:
        return []
    duplicates: dict[int, list] = {}
    for image in Image.objects.filter(
        duplicate_of__in=kept_images, status=ImageStatus.NEAR_DUPLICATE
    ).order_by("id"):
        duplicates.setdefault(image.duplicate_of_id, []).append(image)
    image_ids = [i.pk for i in kept_images] + [d.pk for ds in duplicates.values() for d in ds]
    captions: dict[int, list[Caption]] = {}
    for caption in Caption.objects.filter(image_id__in=image_ids).order_by("id"):
        captions.setdefault(caption.image_id, []).append(caption)
    return [
        ClusterItem(
            kept=ClusterImage(image=kept, captions=captions.get(kept.pk, []), is_kept=True),
            duplicates=[
                ClusterImage(image=d, captions=captions.get(d.pk, []), is_kept=False)
                for d in duplicates.get(kept.pk, [])
            ],
        )
        for kept in kept_images
    ]


def review_audit(*, curator: str = "", decision: str = "") -> QuerySet[Review]:
    queryset = Review.objects.select_related(
        "reviewer", "caption", "caption__image", "rewritten_caption", "undoes"
    )
    if curator:
        queryset = queryset.filter(reviewer__username=curator)
    if decision:
        queryset = queryset.filter(decision=decision)
    # Newest first by id (reviews are only ever appended): the audit pages by keyset on it.
    return queryset.order_by("-id")


# --- a filter run's pairs -------------------------------------------------------------------------


@dataclass
class RunPair:
    caption: Caption
    score: dict | None


@dataclass
class RunPairsPage:
    rows: list[RunPair]
    next_after: int | None  # the caption id to continue after; None at the end
    scanned_to: int | None = None  # dropped pairs: the id the scan stopped at when it gave up early


# Dropped pairs are found by walking the considered pairs by id and leaving out the kept ones; with a rule
# that keeps nearly everything a page could walk far, so one request reads at most this many rows.
DROPPED_SCAN_LIMIT = 20_000


def filter_run_pairs(*, run, show: str, after: int = 0, limit: int = 50) -> RunPairsPage:
    """One page of the pairs a filter run kept (``show="kept"``) or dropped, by caption id after ``after``.

    Keyset pagination, no COUNT: kept ids come from the run's sorted ``.npy`` (memory-mapped, a binary
    search per page); dropped ones from the usable scored pairs of the run's scoring, minus the kept
    ids. The pool may have changed since the run; the page shows the scores as they are now.
    """
    import numpy as np

    from curate.filtering import filter_run_kept_ids_mmap
    from pool.models import CaptionStatus, ImageStatus

    kept = filter_run_kept_ids_mmap(run=run)
    if show == "kept":
        start = int(np.searchsorted(kept, after, side="right"))
        ids = [int(i) for i in kept[start : start + limit + 1]]
        more, ids, scanned_to = len(ids) > limit, ids[:limit], None
    else:
        scores = Score.objects.filter(
            caption=OuterRef("pk"), encoder=run.encoder, reward_model_version=run.reward_model_version
        )
        considered = (
            Caption.objects.filter(status=CaptionStatus.OK, image__status=ImageStatus.OK)
            .filter(Exists(scores))
            .order_by("id")
        )
        ids, cursor, scanned, scanned_to = [], after, 0, None
        batch = max(limit * 4, 500)
        while len(ids) <= limit:
            chunk = list(considered.filter(id__gt=cursor).values_list("id", flat=True)[:batch])
            if not chunk:
                break
            found = np.asarray(chunk, dtype=np.int64)
            if len(kept):
                positions = np.minimum(np.searchsorted(kept, found), len(kept) - 1)
                found = found[kept[positions] != found]
            ids.extend(int(i) for i in found)
            cursor, scanned = chunk[-1], scanned + len(chunk)
            if scanned >= DROPPED_SCAN_LIMIT and len(ids) <= limit:
                scanned_to = cursor
                break
        more = len(ids) > limit
        ids = ids[:limit]
    captions = Caption.objects.filter(id__in=ids).select_related("image").in_bulk()
    score_rows = {
        row["caption_id"]: row
        for row in Score.objects.filter(
            caption_id__in=ids, encoder=run.encoder, reward_model_version=run.reward_model_version
        ).values("caption_id", "reward", "clipscore", "cosine", "criteria")
    }
    rows = [RunPair(caption=captions[i], score=score_rows.get(i)) for i in ids if i in captions]
    next_after = ids[-1] if more and ids else None
    if scanned_to is not None and not more:
        next_after = scanned_to  # the scan stopped early: the next page goes on from where it stopped
    return RunPairsPage(rows=rows, next_after=next_after, scanned_to=scanned_to)
