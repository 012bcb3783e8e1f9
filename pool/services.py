"""Writes to the pool: imports (``pool_import``) and cleaning (``pool_clean``).

Both run inside a Run row (progress, summary, error) and are safe to run twice: an import inserts with
``ignore_conflicts`` on content keys (image sha256, caption (image, text sha256)), and cleaning
recomputes every mark from the data, writing only the rows whose mark changes.
"""

from __future__ import annotations

import logging
import stat
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.db import reset_queries, transaction
from django.utils import timezone

from pool import cleaning
from pool.images import ImageInfo, ImageRejected, image_inspect, image_store
from pool.models import (
    Caption,
    CaptionStatus,
    CleaningRun,
    Image,
    ImageStatus,
    ImportRun,
    RunStatus,
    text_sha256,
)
from pool.readers import (
    ImportSourceError,
    Record,
    Skip,
    path_resolve,
    path_within,
    records_estimate,
    records_read,
    source_resolve,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
MAX_SKIPS_LISTED = 100
# Rows that name the same image are usually near each other; the recent paths suffice and bound memory.
PATH_CACHE_SIZE = 1024


class ImportFailed(Exception):
    """The import could not run at all (missing file, missing column): one line for people."""


# --- runs -----------------------------------------------------------------------------------------


def _run_start(run, *, total: int = 0) -> None:
    run.status = RunStatus.RUNNING
    run.started_at = run.started_at or timezone.now()
    run.error = ""
    run.total = total
    run.done = 0
    run.save(update_fields=["status", "started_at", "error", "total", "done"])


def _run_progress(run, *, done: int, total: int, progress: Progress | None) -> None:
    run.done, run.total = done, max(total, done)
    type(run).objects.filter(pk=run.pk).update(done=run.done, total=run.total)
    if progress:
        progress(run.done, run.total)


def _run_finish(run, *, status: str, summary: dict, error: str = "") -> None:
    run.status = status
    run.summary = summary
    run.error = error
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "summary", "error", "finished_at", "done", "total"])


def _run_cancelled(run) -> bool:
    return type(run).objects.filter(pk=run.pk, status=RunStatus.CANCELLED).exists()


# --- import ---------------------------------------------------------------------------------------


@dataclass
class ImportSummary:
    records: int = 0
    images_imported: int = 0
    images_duplicate: int = 0
    already_present: int = 0
    more_captions: int = 0
    captions_imported: int = 0
    captions_already_present: int = 0
    captions_marked: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    skips: list[dict] = field(default_factory=list)

    def skip(self, item: Skip) -> None:
        self.skipped[item.code] += 1
        if len(self.skips) < MAX_SKIPS_LISTED:
            self.skips.append(item.as_dict())

    def as_dict(self) -> dict:
        return {
            "records": self.records,
            "images_imported": self.images_imported,
            "images_duplicate": self.images_duplicate,
            "already_present": self.already_present,
            "more_captions": self.more_captions,
            "captions_imported": self.captions_imported,
            "captions_already_present": self.captions_already_present,
            "captions_marked": dict(self.captions_marked),
            "skipped_total": sum(self.skipped.values()),
            "skipped": dict(self.skipped),
            "skips": self.skips,
        }


@dataclass
class _Entry:
    record: Record
    info: ImageInfo
    file: str  # relative path of the stored copy


# Reads, decodes and hashes overlap in threads: file system calls wait on storage (slow on network
# volumes) and Pillow, hashlib and the DCT release the GIL while they work.
IMPORT_THREADS = 8
# Records in flight ahead of the database writer: bounds memory to this many images' bytes.
PREFETCH = 64


class _ImageLoader:
    """Validates and stores the image of each record, ahead of the writer, in a few threads.

    Tables often list one image on several rows (one per caption); a bounded map from path to its
    pending or finished result makes each file be read and decoded once per import.
    """

    def __init__(self, threads: int = IMPORT_THREADS):
        self.by_path: OrderedDict[str, Future] = OrderedDict()
        # Bigger than any image under the pixel limit can honestly be (4 bytes per pixel + headers).
        self.max_bytes = settings.LOUPE_MAX_IMAGE_PIXELS * 4 + (1 << 20)
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pool-import")

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def loaded(self, items: Iterator[Record | Skip]) -> Iterator[tuple[Record | Skip, object]]:
        """Yield each item in order with its ``(ImageInfo, file)``, its ``ImageRejected``, or None for skips."""
        pending: deque[tuple[Record | Skip, Future | None]] = deque()
        for item in items:
            pending.append((item, None if isinstance(item, Skip) else self._submit(item)))
            if len(pending) > PREFETCH:
                yield self._settle(*pending.popleft())
        while pending:
            yield self._settle(*pending.popleft())

    @staticmethod
    def _settle(item, future: Future | None):
        if future is None:
            return item, None
        try:
            return item, future.result()
        except ImageRejected as exc:
            return item, exc

    def _submit(self, record: Record) -> Future:
        if record.data is not None:
            return self.executor.submit(self._from_bytes, record.data)
        key = str(record.path)
        future = self.by_path.get(key)
        if future is not None:
            self.by_path.move_to_end(key)
            return future
        future = self.executor.submit(self._from_path, record)
        self.by_path[key] = future
        if len(self.by_path) > PATH_CACHE_SIZE:
            self.by_path.popitem(last=False)
        return future

    def _from_path(self, record: Record) -> tuple[ImageInfo, str]:
        real, st = path_resolve(str(record.path))
        if record.root is not None and not path_within(real, record.root):
            raise ImageRejected("outside_root", f"{record.key} is outside the import root {record.root}")
        if st is None or not stat.S_ISREG(st.st_mode):
            raise ImageRejected("missing_file", f"image file not found: {record.key}")
        if st.st_size > self.max_bytes:
            raise ImageRejected(
                "too_many_pixels",
                f"file of {st.st_size:,} bytes is too large to be an image under the pixel limit",
            )
        try:
            with open(real, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ImageRejected("missing_file", f"cannot read {record.key}: {exc.strerror}") from exc
        return self._from_bytes(data)

    @staticmethod
    def _from_bytes(data: bytes) -> tuple[ImageInfo, str]:
        info = image_inspect(data)
        return info, image_store(data=data, info=info)


def _import_flush(entries: list[_Entry], summary: ImportSummary) -> None:
    """Write one batch: images first (content-keyed), then captions, in one transaction."""
    if not entries:
        return
    shas = list(dict.fromkeys(e.info.sha256 for e in entries))
    with transaction.atomic():
        before = {
            sha: (pk, source, key)
            for pk, sha, source, key in Image.objects.filter(sha256__in=shas).values_list(
                "pk", "sha256", "source", "source_key"
            )
        }
        new_images: dict[str, Image] = {}
        for entry in entries:
            sha = entry.info.sha256
            if sha in before or sha in new_images:
                continue
            info = entry.info
            new_images[sha] = Image(
                sha256=sha,
                phash=info.phash,
                width=info.width,
                height=info.height,
                format=info.format,
                bytes=info.size,
                file=entry.file,
                source=entry.record.source[-255:],
                source_key=entry.record.key[:1024],
            )
        Image.objects.bulk_create(new_images.values(), ignore_conflicts=True)
        # ignore_conflicts gives no ids back (and another import may have won a race): re-read them.
        rows = dict(before)
        if new_images:
            rows.update(
                (sha, (pk, source, key))
                for pk, sha, source, key in Image.objects.filter(sha256__in=list(new_images)).values_list(
                    "pk", "sha256", "source", "source_key"
                )
            )
        # Only images that existed before this batch can already have captions. (An image created
        # meanwhile by a concurrent import may too; the unique key then keeps the data right and only
        # this batch's counts would be off.)
        seen_pairs: set[tuple[int, str]] = set()
        if before:
            text_shas = {
                text_sha256(c.text) for e in entries if e.info.sha256 in before for c in e.record.captions
            }
            seen_pairs = set(
                Caption.objects.filter(
                    image_id__in=[pk for pk, _, _ in before.values()], text_sha256__in=text_shas
                ).values_list("image_id", "text_sha256")
            )
        created_now: set[str] = set()
        new_captions: list[Caption] = []
        for entry in entries:
            record = entry.record
            pk, source, key = rows[entry.info.sha256]
            added = 0
            for caption in record.captions:
                digest = text_sha256(caption.text)
                if (pk, digest) in seen_pairs:
                    summary.captions_already_present += 1
                    continue
                seen_pairs.add((pk, digest))
                added += 1
                if caption.status != CaptionStatus.OK:
                    summary.captions_marked[caption.status] += 1
                new_captions.append(
                    Caption(
                        image_id=pk,
                        text=caption.text,
                        text_sha256=digest,
                        source=caption.source,
                        status=caption.status,
                        status_reason=caption.reason[:255],
                    )
                )
            sha = entry.info.sha256
            if sha not in before and sha not in created_now:
                created_now.add(sha)
                summary.images_imported += 1
            elif not added:
                summary.already_present += 1
            elif (source, key) != (record.source[-255:], record.key[:1024]):
                summary.images_duplicate += 1
            else:
                summary.more_captions += 1
            summary.captions_imported += added
        Caption.objects.bulk_create(new_captions, ignore_conflicts=True, batch_size=1000)


def pool_import(
    *,
    source: str,
    format: str | None = None,
    image_column: str | None = None,
    caption_columns: str | list | None = None,
    caption_source: str = "alt",
    batch_size: int = 500,
    root: str | None = None,
    run: ImportRun | None = None,
    progress: Progress | None = None,
) -> ImportRun:
    """Import a folder, a CSV/JSONL/Parquet table or WebDataset shards into the pool.

    ``caption_columns`` names one or more columns, each optionally with its CaptionSource:
    ``"title:alt,description:human"`` (a list of such strings works too); columns without a source
    take ``caption_source``. Bad rows are skipped and reported on the run; a problem with the whole
    source raises ``ImportFailed`` after recording it on the run.
    """
    params = {
        "format": format,
        "image_column": image_column,
        "caption_columns": caption_columns,
        "caption_source": caption_source,
        "batch_size": batch_size,
        "root": root,
    }
    if run is None:
        run = ImportRun.objects.create(source=source, format=format or "", params=params)
    summary = ImportSummary()
    try:
        src = source_resolve(source, format=format, root=root)
        if run.format != src.format:
            run.format = src.format
            run.save(update_fields=["format"])
        _run_start(run, total=records_estimate(src))
        items = records_read(
            src, image_column=image_column, caption_columns=caption_columns, caption_source=caption_source
        )
        loader = _ImageLoader()
        batch: list[_Entry] = []
        done = 0
        try:
            for item, loaded in loader.loaded(items):
                done += 1
                if isinstance(item, Skip):
                    summary.skip(item)
                    continue
                summary.records += 1
                if isinstance(loaded, ImageRejected):
                    summary.skip(Skip(item.file, item.row, loaded.code, loaded.message))
                    continue
                info, file = loaded
                batch.append(_Entry(item, info, file))
                if len(batch) >= batch_size:
                    _import_flush(batch, summary)
                    batch = []
                    # With DEBUG on, Django keeps the last 9000 queries; our bulk inserts are large.
                    reset_queries()
                    _run_progress(run, done=done, total=run.total, progress=progress)
                    if _run_cancelled(run):
                        _run_finish(run, status=RunStatus.CANCELLED, summary=summary.as_dict())
                        return run
        finally:
            loader.close()
        _import_flush(batch, summary)
        _run_progress(run, done=done, total=done, progress=progress)
    except ImportSourceError as exc:
        _run_finish(run, status=RunStatus.FAILED, summary=summary.as_dict(), error=str(exc))
        raise ImportFailed(str(exc)) from exc
    except Exception as exc:
        logger.exception("import %s of %s failed", run.pk, source)
        _run_finish(
            run, status=RunStatus.FAILED, summary=summary.as_dict(), error=f"{type(exc).__name__}: {exc}"
        )
        raise
    _run_finish(run, status=RunStatus.SUCCEEDED, summary=summary.as_dict())
    return run


# --- cleaning -------------------------------------------------------------------------------------

# Marks cleaning owns; anything else (``rejected`` by a person, ``too_long`` from the import) stays.
CLEANING_IMAGE_STATUSES = {
    ImageStatus.OK,
    ImageStatus.DUPLICATE,
    ImageStatus.NEAR_DUPLICATE,
    ImageStatus.LOW_RES,
}
CLEANING_CAPTION_STATUSES = {
    CaptionStatus.OK,
    CaptionStatus.EMPTY,
    CaptionStatus.TRIVIAL,
    CaptionStatus.DUPLICATE,
}
PAGE = 5000
CHUNK = 1000


@dataclass
class _PoolArrays:
    ids: np.ndarray
    hashes: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    eligible: np.ndarray  # has a hash and is not rejected by a person


def _pool_arrays() -> _PoolArrays:
    """Read the columns cleaning needs, page by page (keyset on id): about 30 bytes per image."""
    ids, hashes, widths, heights, eligible = [], [], [], [], []
    last = 0
    while True:
        page = list(
            Image.objects.filter(pk__gt=last)
            .order_by("pk")
            .values_list("pk", "phash", "width", "height", "status")[:PAGE]
        )
        if not page:
            break
        for pk, phash, width, height, status in page:
            ids.append(pk)
            hashes.append(cleaning.phash_to_int(phash))
            widths.append(width)
            heights.append(height)
            eligible.append(bool(phash) and status != ImageStatus.REJECTED)
        last = page[-1][0]
    return _PoolArrays(
        ids=np.array(ids, dtype=np.int64),
        hashes=np.array(hashes, dtype=np.uint64),
        widths=np.array(widths, dtype=np.int64),
        heights=np.array(heights, dtype=np.int64),
        eligible=np.array(eligible, dtype=bool),
    )


def _image_marks(arrays: _PoolArrays, *, radius: int) -> tuple[dict[int, cleaning.DuplicateMark], np.ndarray]:
    """Duplicate marks and keeper per index, over the eligible images only."""
    n = len(arrays.ids)
    keeper = np.arange(n, dtype=np.int64)
    subset = np.flatnonzero(arrays.eligible)
    areas = arrays.widths * arrays.heights
    marks, sub_keeper = cleaning.near_duplicate_groups(arrays.hashes[subset], areas[subset], radius)
    keeper[subset] = subset[sub_keeper]
    by_index = {
        int(subset[m.index]): cleaning.DuplicateMark(int(subset[m.index]), int(subset[m.keeper]), m.distance)
        for m in marks
    }
    return by_index, keeper


def _image_status(index: int, arrays: _PoolArrays, marks: dict, min_side: int) -> tuple[str, str, int | None]:
    mark = marks.get(index)
    if mark is not None:
        kept_id = int(arrays.ids[mark.keeper])
        kw, kh = int(arrays.widths[mark.keeper]), int(arrays.heights[mark.keeper])
        w, h = int(arrays.widths[index]), int(arrays.heights[index])
        if mark.distance == 0 and (w, h) == (kw, kh):
            return (
                ImageStatus.DUPLICATE,
                f"same picture as image {kept_id} (identical hash and size)",
                kept_id,
            )
        return (
            ImageStatus.NEAR_DUPLICATE,
            f"near duplicate of image {kept_id} ({kw}x{kh}, kept as the highest resolution; "
            f"Hamming distance {mark.distance})",
            kept_id,
        )
    side = int(min(arrays.widths[index], arrays.heights[index]))
    if side < min_side:
        return ImageStatus.LOW_RES, f"shorter side {side} px is below {min_side} px", None
    return ImageStatus.OK, "", None


def _images_write(arrays: _PoolArrays, marks: dict, *, min_side: int, counts: Counter, tick) -> int:
    changed = 0
    n = len(arrays.ids)
    for start in range(0, n, CHUNK):
        chunk_ids = arrays.ids[start : start + CHUNK].tolist()
        current = {
            pk: (status, reason, dup)
            for pk, status, reason, dup in Image.objects.filter(pk__in=chunk_ids).values_list(
                "pk", "status", "status_reason", "duplicate_of_id"
            )
        }
        updates = []
        for offset, pk in enumerate(chunk_ids):
            index = start + offset
            if pk not in current or current[pk][0] not in CLEANING_IMAGE_STATUSES:
                if pk in current:
                    counts[current[pk][0]] += 1
                continue
            status, reason, dup = _image_status(index, arrays, marks, min_side)
            counts[status] += 1
            if current[pk] != (status, reason, dup):
                updates.append(Image(pk=pk, status=status, status_reason=reason, duplicate_of_id=dup))
        if updates:
            Image.objects.bulk_update(updates, ["status", "status_reason", "duplicate_of"])
            changed += len(updates)
        tick(len(chunk_ids))
    return changed


def _group_caption_duplicates(arrays: _PoolArrays, keeper: np.ndarray) -> tuple[dict[int, str], set[int]]:
    """Captions repeated (after normalising) within a near-duplicate group, keeper's captions first.

    Returns {caption id: reason} and the image ids that belong to a group of two or more.
    """
    members: dict[int, list[int]] = {}
    for index in np.flatnonzero(keeper != np.arange(len(keeper))).tolist():
        members.setdefault(int(keeper[index]), [int(keeper[index])]).append(index)
    grouped_ids = {int(arrays.ids[i]) for group in members.values() for i in group}
    duplicates: dict[int, str] = {}
    groups = list(members.values())
    for start in range(0, len(groups), 200):
        chunk = groups[start : start + 200]
        image_ids = [int(arrays.ids[i]) for group in chunk for i in group]
        captions: dict[int, list[tuple[int, str, str]]] = {}
        for pk, image_id, text, status in (
            Caption.objects.filter(image_id__in=image_ids)
            .order_by("pk")
            .values_list("pk", "image_id", "text", "status")
        ):
            captions.setdefault(image_id, []).append((pk, text, status))
        for group in chunk:
            seen: dict[str, tuple[int, int]] = {}
            for index in group:  # keeper first
                image_id = int(arrays.ids[index])
                for pk, text, status in captions.get(image_id, []):
                    if status not in CLEANING_CAPTION_STATUSES or cleaning.caption_check(text)[0] != "ok":
                        continue
                    norm = cleaning.caption_normalise(text)
                    if norm in seen:
                        first_pk, first_image = seen[norm]
                        where = "this image" if first_image == image_id else f"image {first_image}"
                        duplicates[pk] = f"same text as caption {first_pk} on {where}"
                    else:
                        seen[norm] = (pk, image_id)
    return duplicates, grouped_ids


def _captions_write(arrays: _PoolArrays, keeper: np.ndarray, *, counts: Counter, tick) -> int:
    group_dups, grouped_ids = _group_caption_duplicates(arrays, keeper)
    changed = 0
    ids = arrays.ids.tolist()
    for start in range(0, len(ids), CHUNK):
        chunk_ids = ids[start : start + CHUNK]
        rows = (
            Caption.objects.filter(image_id__in=chunk_ids)
            .order_by("image_id", "pk")
            .values_list("pk", "image_id", "text", "status", "status_reason")
        )
        updates = []
        seen: dict[str, int] = {}
        current_image = None
        for pk, image_id, text, status, old_reason in rows.iterator(chunk_size=2000):
            if image_id != current_image:
                current_image, seen = image_id, {}
            if status not in CLEANING_CAPTION_STATUSES:
                counts[status] += 1
                continue
            new_status, reason = cleaning.caption_check(text)
            if new_status == "ok":
                if pk in group_dups:
                    new_status, reason = CaptionStatus.DUPLICATE, group_dups[pk]
                elif image_id not in grouped_ids:
                    norm = cleaning.caption_normalise(text)
                    if norm in seen:
                        new_status, reason = (
                            CaptionStatus.DUPLICATE,
                            f"same text as caption {seen[norm]} on this image",
                        )
                    else:
                        seen[norm] = pk
            counts[new_status] += 1
            if (status, old_reason) != (new_status, reason):
                updates.append(Caption(pk=pk, status=new_status, status_reason=reason))
        if updates:
            Caption.objects.bulk_update(updates, ["status", "status_reason"], batch_size=CHUNK)
            changed += len(updates)
        tick(len(chunk_ids))
    return changed


def pool_clean(
    *,
    min_side: int | None = None,
    hamming_radius: int = 6,
    run: CleaningRun | None = None,
    progress: Progress | None = None,
) -> CleaningRun:
    """Mark low-resolution images, near duplicates (grouped, highest resolution kept) and empty, trivial
    or repeated captions. Recomputes every mark it owns, so running it twice changes nothing."""
    min_side = settings.LOUPE_MIN_IMAGE_SIDE if min_side is None else min_side
    if not 0 <= hamming_radius <= 32:
        # Beyond 32 of 64 bits unrelated pictures match, and the band split needs radius + 1 <= 64.
        raise ValueError(f"hamming_radius must be between 0 and 32, not {hamming_radius}")
    if run is None:
        run = CleaningRun.objects.create(params={"min_side": min_side, "hamming_radius": hamming_radius})
    try:
        _run_start(run)
        arrays = _pool_arrays()
        total = 2 * len(arrays.ids)
        done = 0

        def tick(count: int) -> None:
            nonlocal done
            done += count
            _run_progress(run, done=done, total=total, progress=progress)

        marks, keeper = _image_marks(arrays, radius=hamming_radius)
        # No transaction around the passes: each chunk commits on its own so progress is visible, and
        # a run cut short is completed by running again (every mark is recomputed).
        image_counts: Counter = Counter()
        images_changed = _images_write(arrays, marks, min_side=min_side, counts=image_counts, tick=tick)
        caption_counts: Counter = Counter()
        captions_changed = _captions_write(arrays, keeper, counts=caption_counts, tick=tick)
        groups = len({m.keeper for m in marks.values()})
        summary = {
            "images": dict(image_counts),
            "captions": dict(caption_counts),
            "near_duplicate_groups": groups,
            "images_changed": images_changed,
            "captions_changed": captions_changed,
            "min_side": min_side,
            "hamming_radius": hamming_radius,
        }
    except Exception as exc:
        logger.exception("cleaning %s failed", run.pk)
        _run_finish(run, status=RunStatus.FAILED, summary={}, error=f"{type(exc).__name__}: {exc}")
        raise
    _run_finish(run, status=RunStatus.SUCCEEDED, summary=summary)
    return run


# --- starting runs from pages ---------------------------------------------------------------------


def import_run_start(
    *,
    source: str,
    user=None,
    format: str | None = None,
    image_column: str | None = None,
    caption_columns: str | None = None,
    caption_source: str = "alt",
) -> ImportRun:
    """Create a queued import and enqueue it once the row is committed (the worker must see it)."""
    from pool.tasks import import_run_execute

    run = ImportRun.objects.create(
        source=source,
        format=format or "",
        created_by=user,
        params={
            "format": format or None,
            "image_column": image_column or None,
            "caption_columns": caption_columns or None,
            "caption_source": caption_source,
        },
    )
    transaction.on_commit(lambda: import_run_execute.delay(run.pk))
    return run


def cleaning_run_start(*, user=None, min_side: int | None = None, hamming_radius: int = 6) -> CleaningRun:
    from pool.tasks import cleaning_run_execute

    run = CleaningRun.objects.create(
        created_by=user,
        params={
            "min_side": settings.LOUPE_MIN_IMAGE_SIDE if min_side is None else min_side,
            "hamming_radius": hamming_radius,
        },
    )
    transaction.on_commit(lambda: cleaning_run_execute.delay(run.pk))
    return run
