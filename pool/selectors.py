"""Reads of the pool for pages: paginated by keyset (no OFFSET, no COUNT over the pool per page)."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.cache import cache
from django.db.models import Count, Exists, OuterRef, Prefetch

from pool.models import Caption, CaptionStatus, CleaningRun, Image, ImageStatus, ImportRun

STATS_CACHE_SECONDS = 30
PAGE_SIZE = 48


def pool_stats(*, fresh: bool = False) -> dict:
    """Counts by status for the header. A GROUP BY over a big pool is not free, so it is cached briefly."""
    key = "pool:stats"
    stats = None if fresh else cache.get(key)
    if stats is None:
        images = dict(Image.objects.order_by().values_list("status").annotate(n=Count("pk")))
        captions = dict(Caption.objects.order_by().values_list("status").annotate(n=Count("pk")))
        stats = {
            "images": [(label, images.get(value, 0), value) for value, label in ImageStatus.choices],
            "captions": [(label, captions.get(value, 0), value) for value, label in CaptionStatus.choices],
            "images_total": sum(images.values()),
            "captions_total": sum(captions.values()),
        }
        cache.set(key, stats, STATS_CACHE_SECONDS)
    return stats


def pool_stats_forget() -> None:
    cache.delete("pool:stats")


def image_sources(*, limit: int = 200) -> list[str]:
    key = "pool:sources"
    sources = cache.get(key)
    if sources is None:
        sources = list(Image.objects.order_by("source").values_list("source", flat=True).distinct()[:limit])
        cache.set(key, sources, STATS_CACHE_SECONDS)
    return sources


@dataclass
class ImagePage:
    images: list[Image]
    next_after: int | None  # older images: ?after=<id>
    prev_before: int | None  # newer images: ?before=<id>


def images_page(
    *,
    status: str = "",
    source: str = "",
    q: str = "",
    after: int | None = None,
    before: int | None = None,
    limit: int | None = None,
) -> ImagePage:
    """Newest first. ``after``/``before`` are image ids of the page edges (keyset pagination)."""
    limit = limit or PAGE_SIZE
    images = Image.objects.all()
    if status:
        images = images.filter(status=status)
    if source:
        images = images.filter(source=source)
    if q:
        images = images.filter(Exists(Caption.objects.filter(image=OuterRef("pk"), text__icontains=q)))
    if before is not None:
        rows = list(images.filter(pk__gt=before).order_by("pk")[: limit + 1])
        has_more_newer = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        next_after = rows[-1].pk if rows else None
        prev_before = rows[0].pk if rows and has_more_newer else None
    else:
        if after is not None:
            images = images.filter(pk__lt=after)
        rows = list(images.order_by("-pk")[: limit + 1])
        has_more = len(rows) > limit
        rows = rows[:limit]
        next_after = rows[-1].pk if rows and has_more else None
        prev_before = rows[0].pk if rows and after is not None else None
    captions = Caption.objects.order_by("pk")
    ids = [image.pk for image in rows]
    by_image: dict[int, list[Caption]] = {}
    for caption in captions.filter(image_id__in=ids):
        by_image.setdefault(caption.image_id, []).append(caption)
    for image in rows:
        image.caption_list = by_image.get(image.pk, [])
    return ImagePage(images=rows, next_after=next_after, prev_before=prev_before)


def image_detail(*, image_id: int) -> Image:
    return (
        Image.objects.select_related("duplicate_of")
        .prefetch_related(Prefetch("captions", queryset=Caption.objects.order_by("pk")))
        .get(pk=image_id)
    )


def image_duplicates(*, image: Image, limit: int = 50) -> list[Image]:
    return list(image.duplicates.order_by("pk")[:limit])


def import_runs(*, limit: int = 50) -> list[ImportRun]:
    return list(ImportRun.objects.select_related("created_by").order_by("-created_at", "-pk")[:limit])


def cleaning_runs(*, limit: int = 50) -> list[CleaningRun]:
    return list(CleaningRun.objects.select_related("created_by").order_by("-created_at", "-pk")[:limit])
