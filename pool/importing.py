"""Imports into the pool (``pool_import``), and queueing one from a page (``import_run_start``).

An import runs inside an ImportRun row (progress, summary, error) and is safe to run twice: it inserts
with ``ignore_conflicts`` on content keys (image sha256, caption (image, text sha256)).
"""

from __future__ import annotations

import logging
import stat
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.db import reset_queries, transaction

from pool.images import ImageInfo, ImageRejected, image_inspect, image_store
from pool.models import Caption, CaptionStatus, Image, ImportRun, RunStatus, text_sha256
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
from pool.runs import Progress, run_cancelled, run_finish, run_progress, run_start

logger = logging.getLogger(__name__)

MAX_SKIPS_LISTED = 100
# Rows that name the same image are usually near each other; the recent paths suffice and bound memory.
PATH_CACHE_SIZE = 1024


class ImportFailed(Exception):
    """The import could not run at all (missing file, missing column): one line for people."""


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
        run_start(run, total=records_estimate(src))
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
                    run_progress(run, done=done, total=run.total, progress=progress)
                    if run_cancelled(run):
                        run_finish(run, status=RunStatus.CANCELLED, summary=summary.as_dict())
                        return run
        finally:
            loader.close()
        _import_flush(batch, summary)
        run_progress(run, done=done, total=done, progress=progress)
    except ImportSourceError as exc:
        run_finish(run, status=RunStatus.FAILED, summary=summary.as_dict(), error=str(exc))
        raise ImportFailed(str(exc)) from exc
    except Exception as exc:
        logger.exception("import %s of %s failed", run.pk, source)
        run_finish(
            run, status=RunStatus.FAILED, summary=summary.as_dict(), error=f"{type(exc).__name__}: {exc}"
        )
        raise
    run_finish(run, status=RunStatus.SUCCEEDED, summary=summary.as_dict())
    return run


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
