"""Reads of the pool for pages: paginated by keyset (no OFFSET, no COUNT over the pool per page)."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Left

from pool.models import (
    URL_INDEX_CHARS,
    Caption,
    CaptionStatus,
    CleaningRun,
    Image,
    ImageStatus,
    ImportRun,
    Shard,
    ShardStatus,
)

STATS_CACHE_SECONDS = 30
PAGE_SIZE = 48


# Above this many rows (PostgreSQL's own estimate) pages show PostgreSQL's statistics ("about", from
# ANALYZE's sample) instead of counting: a GROUP BY over 10M pairs takes seconds on every cache miss.
ESTIMATE_ABOVE_ROWS = 1_000_000


def table_rows_estimate(model) -> int | None:
    """``pg_class.reltuples`` of the model's table: PostgreSQL's row estimate; None elsewhere or unknown."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table]
        )
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None


def status_counts_estimate(model, total: int) -> dict[str, int]:
    """Rows per status from ``pg_stats`` (most common values and their frequencies) times ``total``.
    A status too rare for ANALYZE's sample is missing (shown as none)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT most_common_vals::text::text[], most_common_freqs FROM pg_stats "
            "WHERE schemaname = current_schema() AND tablename = %s AND attname = 'status'",
            [model._meta.db_table],
        )
        row = cursor.fetchone()
    if not row or not row[0]:
        return {}
    return {value: round(total * freq) for value, freq in zip(row[0], row[1], strict=False)}


def pool_counts_estimate() -> dict | None:
    """Images and captions by status from PostgreSQL's statistics when the pool is big, else None
    (count exactly). ``usable`` assumes caption and image statuses independent: an estimate."""
    images_total = table_rows_estimate(Image)
    captions_total = table_rows_estimate(Caption)
    if images_total is None or captions_total is None or captions_total < ESTIMATE_ABOVE_ROWS:
        return None
    images = status_counts_estimate(Image, images_total)
    captions = status_counts_estimate(Caption, captions_total)
    ok_share = (images.get(ImageStatus.OK, 0) / images_total) if images_total else 0.0
    return {
        "images": images,
        "captions": captions,
        "images_total": images_total,
        "captions_total": captions_total,
        "usable": round(captions.get(CaptionStatus.OK, 0) * ok_share),
    }


def pool_stats(*, fresh: bool = False) -> dict:
    """Counts by status for the header. A GROUP BY over a big pool is not free, so it is cached briefly;
    above ``ESTIMATE_ABOVE_ROWS`` it is PostgreSQL's estimate (``estimated``: the page says "about")."""
    key = "pool:stats"
    stats = None if fresh else cache.get(key)
    if stats is None:
        estimate = pool_counts_estimate()
        if estimate is not None:
            images, captions = estimate["images"], estimate["captions"]
        else:
            images = dict(Image.objects.order_by().values_list("status").annotate(n=Count("pk")))
            captions = dict(Caption.objects.order_by().values_list("status").annotate(n=Count("pk")))
        stats = {
            "estimated": estimate is not None,
            "images": [(label, images.get(value, 0), value) for value, label in ImageStatus.choices],
            "captions": [(label, captions.get(value, 0), value) for value, label in CaptionStatus.choices],
            "images_total": estimate["images_total"] if estimate else sum(images.values()),
            "captions_total": estimate["captions_total"] if estimate else sum(captions.values()),
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


# --- the source's identity ------------------------------------------------------------------------


def meta_filter_parse(text: str) -> tuple[str, str] | None:
    """``"name=value"`` -> ``("name", "value")``; None when there is no ``=`` or no name."""
    name, sep, value = (text or "").partition("=")
    name = name.strip()
    return (name, value.strip()) if sep and name else None


def _json_candidates(value: str) -> list:
    """What a typed ``value`` may be in JSON: the string, and the number or boolean it spells."""
    out: list = [value]
    for parse in (int, float):
        try:
            out.append(parse(value))
            break
        except ValueError:
            continue
    if value.lower() in ("true", "false"):
        out.append(value.lower() == "true")
    return out


def captions_by_identity(
    captions: QuerySet, *, uid: str = "", key: str = "", url: str = "", meta: tuple[str, str] | None = None
) -> QuerySet:
    """Captions filtered by the source's identity: uid, key and url (exact; indexed), and one metadata
    column's value (``meta=("original_width", "640")``: matches the string or the number it spells)."""
    if uid:
        captions = captions.filter(uid=uid.strip().lower())
    if key:
        captions = captions.filter(key=key)
    if url:
        # The index holds the URL's head (long URLs do not fit a B-tree entry): filter on it, then exact.
        captions = captions.annotate(url_head=Left("url", URL_INDEX_CHARS)).filter(
            url_head=url[:URL_INDEX_CHARS], url=url
        )
    if meta:
        name, value = meta
        # An alias of the key transform: its lookups are the JSON ones (the value is JSON-encoded), and
        # the name is a parameter, never part of the SQL.
        match = Q()
        for candidate in _json_candidates(value):
            match |= Q(meta_value=candidate)
        captions = captions.alias(meta_value=KeyTransform(name, "meta")).filter(match)
    return captions


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
    uid: str = "",
    key: str = "",
    url: str = "",
    meta: tuple[str, str] | None = None,
    shard: int | None = None,
    after: int | None = None,
    before: int | None = None,
    limit: int | None = None,
) -> ImagePage:
    """Newest first. ``after``/``before`` are image ids of the page edges (keyset pagination).
    ``uid``/``key``/``url``/``meta`` select images having a caption with that source identity."""
    limit = limit or PAGE_SIZE
    images = Image.objects.all()
    if status:
        images = images.filter(status=status)
    if source:
        images = images.filter(source=source)
    if shard:
        images = images.filter(shard_id=shard)
    if q:
        images = images.filter(Exists(Caption.objects.filter(image=OuterRef("pk"), text__icontains=q)))
    if uid or key or url or meta:
        matching = captions_by_identity(
            Caption.objects.filter(image=OuterRef("pk")), uid=uid, key=key, url=url, meta=meta
        )
        images = images.filter(Exists(matching))
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
        Image.objects.select_related("duplicate_of", "shard")
        .prefetch_related(Prefetch("captions", queryset=Caption.objects.order_by("pk")))
        .get(pk=image_id)
    )


def image_duplicates(*, image: Image, limit: int = 50) -> list[Image]:
    return list(image.duplicates.order_by("pk")[:limit])


def import_runs(*, limit: int = 50) -> list[ImportRun]:
    return list(ImportRun.objects.select_related("created_by").order_by("-created_at", "-pk")[:limit])


def cleaning_runs(*, limit: int = 50) -> list[CleaningRun]:
    return list(CleaningRun.objects.select_related("created_by").order_by("-created_at", "-pk")[:limit])


def shards_page(
    *, status: str = "", after: int | None = None, limit: int = 100
) -> tuple[list[Shard], int | None]:
    """Shards by id (keyset), problems first when ``status`` asks for them."""
    shards = Shard.objects.order_by("pk")
    if status:
        shards = shards.filter(status=status)
    if after is not None:
        shards = shards.filter(pk__gt=after)
    rows = list(shards[: limit + 1])
    return rows[:limit], (rows[limit - 1].pk if len(rows) > limit else None)


def shard_counts() -> dict[str, int]:
    counts = dict(Shard.objects.order_by().values_list("status").annotate(n=Count("pk")))
    return {value: counts.get(value, 0) for value in ShardStatus.values}
