"""Imports into the pool (``pool_import``): index a source in place, shard by shard; and queueing one
from a page (``import_run_start``).

Indexing copies no image. Each shard gets a ``Shard`` row with its fingerprint; each image, where its
bytes are (a tar member's range, a Parquet cell, a file) and what its header says (format, size); each
caption, the source's identity of the pair (uid, key, url, metadata). An image's bytes pass through
once, to be hashed (sha256: the content key, and what every later read is checked against); the full
decode happens later, once (``pool.inspection``).

An import runs inside an ImportRun row (progress, summary, error) and is safe to run twice: a shard
whose fingerprint has not changed is skipped after a stat and a footer read; rows are keyed by the
image's sha256 and the caption's uid, so nothing is added twice. A shard that changed or vanished is
reported (its Shard row and a line in the summary), never silently re-pointed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.db import reset_queries, transaction
from django.db.models import F
from django.utils import timezone

from pool import storage
from pool.bulk import ids_reserve, rows_insert, rows_where_in
from pool.images import ImageHeader, ImageRejected, image_header
from pool.models import (
    Caption,
    CaptionStatus,
    Image,
    ImportRun,
    RunStatus,
    Shard,
    ShardStatus,
    pair_uid_derive,
    text_sha256,
)
from pool.readers import (
    READERS,
    ImportSource,
    ImportSourceError,
    Record,
    ShardUnreadable,
    Skip,
    Unit,
    path_cache_clear,
    path_resolve,
    path_within,
    read_options,
    records_estimate,
    source_resolve,
)
from pool.runs import Progress, run_cancelled, run_finish, run_progress, run_start

logger = logging.getLogger(__name__)

MAX_SKIPS_LISTED = 100
MAX_PROBLEMS_LISTED = 50
# Rows that name the same image are usually near each other; the recent paths suffice and bound memory.
PATH_CACHE_SIZE = 1024
# Reads of image files overlap in threads: file system calls wait on storage (slow on network volumes
# and object stores) and hashlib releases the GIL. Bytes a reader already holds are hashed inline: a
# thread hand-off costs more than hashing a web-sized image.
IMPORT_THREADS = 8
# Records in flight ahead of the database writer: bounds memory to this many images' bytes.
PREFETCH = 64
DEFAULT_BATCH = 2000


class ImportFailed(Exception):
    """The import could not run at all (missing file, missing column): one line for people."""


class _Cancelled(Exception):
    """Someone cancelled the run: stop after the batch just written."""


# --- summary --------------------------------------------------------------------------------------


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
    uids: Counter = field(default_factory=Counter)  # source / derived
    shards: Counter = field(default_factory=Counter)  # indexed / unchanged / changed / missing / failed
    shard_notes: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cancelled: bool = False

    def merge(self, other: ImportSummary) -> None:
        """Add another shard's summary to this one."""
        for name in (
            "records",
            "images_imported",
            "images_duplicate",
            "already_present",
            "more_captions",
            "captions_imported",
            "captions_already_present",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("captions_marked", "skipped", "uids", "shards"):
            getattr(self, name).update(getattr(other, name))
        self.skips += other.skips[: max(0, MAX_SKIPS_LISTED - len(self.skips))]
        self.shard_notes += other.shard_notes[: max(0, MAX_PROBLEMS_LISTED - len(self.shard_notes))]

    def skip(self, item: Skip) -> None:
        self.skipped[item.code] += 1
        if len(self.skips) < MAX_SKIPS_LISTED:
            self.skips.append(item.as_dict())

    def shard_note(self, uri: str, status: str, reason: str) -> None:
        self.shards[status] += 1
        if len(self.shard_notes) < MAX_PROBLEMS_LISTED:
            self.shard_notes.append({"shard": uri, "status": status, "reason": reason})

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

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
            "skipped_total": self.skipped_total,
            "skipped": dict(self.skipped),
            "skips": self.skips,
            "uids": dict(self.uids),
            "shards": dict(self.shards),
            "shard_notes": self.shard_notes,
            "problems": self.problems,
        }


# --- reading images -------------------------------------------------------------------------------


@dataclass
class _Loaded:
    sha256: str
    header: ImageHeader
    size: int


def _inspect_bytes(data: bytes, max_pixels: int | None = None) -> _Loaded:
    header = image_header(data, max_pixels=max_pixels)
    return _Loaded(hashlib.sha256(data).hexdigest(), header, len(data))


class _ImageLoader:
    """Hashes and reads the header of each record's image, ahead of the writer.

    Bytes a reader streamed past are handled inline; files are read in a few threads. Tables often
    list one image on several rows (one per caption): a bounded map from path to its pending or
    finished result makes each file be read once per import.
    """

    def __init__(self, threads: int = IMPORT_THREADS):
        self.by_path: OrderedDict[str, Future] = OrderedDict()
        self.max_bytes = settings.LOUPE_MAX_IMAGE_BYTES
        self.max_pixels = settings.LOUPE_MAX_IMAGE_PIXELS  # read once: settings lookups cost per image
        self.threads = threads
        self.executor: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def loaded(self, items: Iterator[Record | Skip]) -> Iterator[tuple[Record | Skip, object]]:
        """Each item in order with its ``_Loaded``, its ``ImageRejected``, or None for skips."""
        pending: deque[tuple[Record | Skip, object]] = deque()
        for item in items:
            if isinstance(item, Skip):
                result: object = None
            elif item.data is not None:
                try:
                    result = _inspect_bytes(item.data, self.max_pixels)
                except ImageRejected as exc:
                    result = exc
                item.data = None  # the bytes are not needed past this point
            else:
                result = self._submit(item)
            pending.append((item, result))
            if len(pending) > PREFETCH:
                yield self._settle(*pending.popleft())
        while pending:
            yield self._settle(*pending.popleft())

    @staticmethod
    def _settle(item, result):
        if isinstance(result, Future):
            try:
                return item, result.result()
            except ImageRejected as exc:
                return item, exc
        return item, result

    def _submit(self, record: Record) -> Future:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="pool-import")
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

    def _from_path(self, record: Record) -> _Loaded:
        path = str(record.path)
        if not storage.is_local(path):
            try:
                data = storage.read_all(path, max_bytes=self.max_bytes)
            except storage.StorageError as exc:
                code = "too_large" if "over the limit" in str(exc) else "missing_file"
                raise ImageRejected(code, str(exc)) from exc
            return _inspect_bytes(data, self.max_pixels)
        real, st = path_resolve(path)
        if record.root is not None and not path_within(real, record.root):
            raise ImageRejected("outside_root", f"{record.key} is outside the import root {record.root}")
        if st is None or not stat.S_ISREG(st.st_mode):
            raise ImageRejected("missing_file", f"image file not found: {record.key}")
        if st.st_size > self.max_bytes:
            raise ImageRejected(
                "too_large", f"{record.key} is {st.st_size:,} bytes, over the limit of {self.max_bytes:,}"
            )
        try:
            with open(real, "rb") as handle:
                data = handle.read(self.max_bytes + 1)
        except OSError as exc:
            raise ImageRejected("missing_file", f"cannot read {record.key}: {exc.strerror}") from exc
        # Point the image at the resolved file: what was checked against the root is what is read later.
        record.path = real
        return _inspect_bytes(data, self.max_pixels)


# --- writing rows ---------------------------------------------------------------------------------


@dataclass
class _Entry:
    record: Record
    loaded: _Loaded
    shard_id: int


def _image_row(entry: _Entry, now) -> dict:
    record, loaded = entry.record, entry.loaded
    return {
        "sha256": loaded.sha256,
        "width": loaded.header.width,
        "height": loaded.header.height,
        "format": loaded.header.format,
        "bytes": loaded.size,
        "shard_id": entry.shard_id,
        "uri": str(record.path)[:1024] if record.path is not None else "",
        "offset": record.offset,
        "length": record.length,
        "row_group": record.row_group,
        "row": record.row_in_group,
        "source": record.unit[-255:],
        "source_key": record.key[:1024],
        "created_at": now,
    }


def _index_flush(entries: list[_Entry], summary: ImportSummary, per_shard: Counter) -> None:
    """Write one batch: images first (keyed by sha256), then captions (keyed by uid), in one transaction."""
    if not entries:
        return
    now = timezone.now()
    shas = list(dict.fromkeys(e.loaded.sha256 for e in entries))
    with transaction.atomic():
        before = {
            sha: (pk, shard_id, key)
            for pk, sha, shard_id, key in rows_where_in(
                Image, "sha256", shas, ["id", "sha256", "shard_id", "source_key"]
            )
        }
        new_images: dict[str, dict] = {}
        for entry in entries:
            sha = entry.loaded.sha256
            if sha not in before and sha not in new_images:
                new_images[sha] = _image_row(entry, now)
        ids = {sha: pk for sha, (pk, _, _) in before.items()}
        reserved = ids_reserve(Image, len(new_images))
        if reserved:
            for row, pk in zip(new_images.values(), reserved, strict=True):
                row["id"] = pk
        if rows_insert(Image, list(new_images.values()), unique="sha256") and reserved:
            ids.update((sha, row["id"]) for sha, row in new_images.items())
        elif new_images:
            # ignore_conflicts gives no ids back, and a concurrent import may have won a race.
            ids.update(Image.objects.filter(sha256__in=list(new_images)).values_list("sha256", "pk"))

        # Every caption's uid: the source's for the record's first caption, derived for the others and
        # for sources without one.
        planned: list[tuple[_Entry, list[tuple[object, str, str, bool]]]] = []
        for entry in entries:
            pk = ids[entry.loaded.sha256]
            items = []
            for n, caption in enumerate(entry.record.captions):
                digest = text_sha256(caption.text)
                source_uid = entry.record.uid if n == 0 else None
                uid = source_uid or pair_uid_derive(entry.loaded.sha256, digest)
                items.append((caption, digest, uid, source_uid is None))
            planned.append((entry, items))
        uids = [uid for _, items in planned for _, _, uid, _ in items]
        existing = {
            uid: (image_id, digest)
            for uid, image_id, digest in rows_where_in(
                Caption, "uid", uids, ["uid", "image_id", "text_sha256"]
            )
        }
        taken: dict[str, tuple[int, str]] = {}
        new_captions: list[dict] = []
        created_now: set[str] = set()
        for entry, items in planned:
            record = entry.record
            sha = entry.loaded.sha256
            pk = ids[sha]
            added = 0
            for caption, digest, uid, derived in items:
                seen = existing.get(uid) or taken.get(uid)
                if seen is not None:
                    if seen == (pk, digest):
                        summary.captions_already_present += 1
                        per_shard["present"] += 1
                    else:
                        summary.skip(
                            Skip(
                                record.file,
                                record.row,
                                "duplicate_uid",
                                f"uid {uid} already names another pair (image {seen[0]}); a uid names one "
                                "pair, so this one is not imported",
                            )
                        )
                    continue
                taken[uid] = (pk, digest)
                added += 1
                summary.uids["derived" if derived else "source"] += 1
                if caption.status != CaptionStatus.OK:
                    summary.captions_marked[caption.status] += 1
                new_captions.append(
                    {
                        "image_id": pk,
                        "text": caption.text,
                        "text_sha256": digest,
                        "source": caption.source,
                        "status": caption.status,
                        "status_reason": caption.reason[:255],
                        "uid": uid,
                        "uid_derived": derived,
                        "key": (record.sample_key or record.key)[:255],
                        "url": record.url,
                        "meta": record.meta,
                        "created_at": now,
                    }
                )
            per_shard["indexed"] += added
            if sha in new_images and sha not in created_now:
                created_now.add(sha)
                summary.images_imported += 1
            elif not added:
                summary.already_present += 1
            elif sha in before and (before[sha][1], before[sha][2]) == (entry.shard_id, record.key[:1024]):
                summary.more_captions += 1
            else:
                summary.images_duplicate += 1
            summary.captions_imported += added
        rows_insert(Caption, new_captions, unique="uid")


# --- shards ---------------------------------------------------------------------------------------


def _shard_for(unit: Unit, fp: dict, run: ImportRun, summary: ImportSummary) -> Shard | None:
    """The Shard row to index ``unit`` into, or None when it must not be indexed now (unchanged, or
    changed since it was indexed: reported)."""
    shard = Shard.objects.filter(uri=unit.uri[:1024]).first()
    now = timezone.now()
    if shard is None:
        return Shard.objects.create(
            uri=unit.uri[:1024],
            format=unit.format,
            metadata_uri=unit.metadata_uri[:1024],
            fingerprint=fp,
            status=ShardStatus.INDEXING,
            import_run=run,
        )
    if shard.status in (ShardStatus.INDEXED, ShardStatus.CHANGED, ShardStatus.MISSING):
        if shard.fingerprint == fp:
            # Unchanged (or restored after a change or a disappearance): nothing to read.
            shard.status, shard.status_reason, shard.checked_at = ShardStatus.INDEXED, "", now
            shard.save(update_fields=["status", "status_reason", "checked_at"])
            summary.shards["unchanged"] += 1
            summary.already_present += shard.samples
            return None
        when = shard.indexed_at.strftime("%Y-%m-%d %H:%M") if shard.indexed_at else "earlier"
        reason = (
            f"changed since it was indexed ({when}): {_fingerprint_diff(shard.fingerprint, fp)}. Its "
            f"{shard.samples} pairs still point at the bytes indexed then and are not re-pointed; pages and "
            "scoring refuse bytes whose sha256 differs. Restore the shard, or import the new version "
            "under a new path."
        )
        shard.status, shard.status_reason, shard.checked_at = ShardStatus.CHANGED, reason, now
        shard.save(update_fields=["status", "status_reason", "checked_at"])
        summary.shard_note(unit.uri, "changed", reason)
        return None
    # Indexing before did not finish (a killed worker, an unreadable shard): index it again; rows
    # already written are recognised by their keys.
    shard.fingerprint, shard.status, shard.import_run = fp, ShardStatus.INDEXING, run
    shard.save(update_fields=["fingerprint", "status", "import_run"])
    return shard


def _fingerprint_diff(old: dict, new: dict) -> str:
    parts = []
    for part in sorted(set(old) | set(new)):
        a, b = old.get(part) or {}, new.get(part) or {}
        changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if changed:
            parts.append(f"{part} {', '.join(changed)} differ")
    return "; ".join(parts) or "fingerprint differs"


def _shard_failed(
    unit: Unit, reason: str, run: ImportRun, summary: ImportSummary, fp: dict | None = None
) -> None:
    shard, _ = Shard.objects.get_or_create(
        uri=unit.uri[:1024],
        defaults={"format": unit.format, "metadata_uri": unit.metadata_uri[:1024], "import_run": run},
    )
    if shard.status in (ShardStatus.INDEXED, ShardStatus.CHANGED) and shard.samples:
        # It was indexed before and cannot be reached now: its rows stay, the shard is reported.
        shard.status = ShardStatus.MISSING
    else:
        shard.status = ShardStatus.FAILED
    shard.status_reason = reason
    shard.checked_at = timezone.now()
    if fp is not None and shard.status == ShardStatus.FAILED:
        shard.fingerprint = fp
    shard.save(update_fields=["status", "status_reason", "checked_at", "fingerprint"])
    summary.shard_note(unit.uri, "failed" if shard.status == ShardStatus.FAILED else "missing", reason)


def _vanished(src: ImportSource, summary: ImportSummary) -> None:
    """Shards indexed from this folder before and not in it now."""
    if not src.listed_from:
        return
    present = {u.uri for u in src.units}
    prefix = src.listed_from.rstrip("/") + ("/" if not storage.is_local(src.listed_from) else os.sep)
    candidates = Shard.objects.filter(
        uri__startswith=prefix, status__in=[ShardStatus.INDEXED, ShardStatus.CHANGED]
    ).values_list("pk", "uri", "samples")
    for pk, uri, samples in candidates.iterator():
        if uri in present or storage.uri_parent(uri).rstrip("/") != src.listed_from.rstrip("/"):
            continue
        if storage.exists(uri):
            continue  # another format's shard in the same folder (say, a .parquet beside .tar shards)
        reason = (
            f"no longer at {uri}: its {samples} pairs stay in the pool but cannot be read until the shard "
            "is back"
        )
        Shard.objects.filter(pk=pk).update(
            status=ShardStatus.MISSING, status_reason=reason, checked_at=timezone.now()
        )
        summary.shard_note(uri, "missing", reason)


# --- import ---------------------------------------------------------------------------------------


def _outcome(summary: ImportSummary) -> tuple[str, str]:
    """(status, error) of a finished import, and the summary's problem lines."""
    if summary.shards.get("changed"):
        summary.problems.append(
            f"{summary.shards['changed']} shards changed since they were indexed (not re-indexed)"
        )
    if summary.shards.get("missing"):
        summary.problems.append(f"{summary.shards['missing']} shards are missing")
    if summary.shards.get("failed"):
        summary.problems.append(f"{summary.shards['failed']} shards could not be read")
    limit = settings.LOUPE_IMPORT_MAX_SKIPPED_FRACTION
    seen = summary.records + summary.skipped_total
    if summary.skipped_total and seen and summary.skipped_total / seen > limit:
        top = ", ".join(f"{code} {n}" for code, n in summary.skipped.most_common(3))
        summary.problems.append(
            f"{summary.skipped_total} of {seen} samples skipped ({summary.skipped_total / seen:.0%}, over the "
            f"limit of {limit:.0%}): {top}"
        )
    # Shards met again (changed or missing) are the pool's already: reported as problems, not "nothing".
    present = (
        summary.already_present
        + summary.captions_already_present
        + summary.shards.get("changed", 0)
        + summary.shards.get("missing", 0)
    )
    if summary.captions_imported == 0 and present == 0:
        if summary.shard_notes:
            why = summary.shard_notes[0]["reason"]
        elif summary.skipped:
            why = (
                "every sample was skipped ("
                + ", ".join(f"{c} {n}" for c, n in summary.skipped.most_common(3))
                + ")"
            )
        else:
            why = "the source holds no samples"
        return RunStatus.FAILED, f"Nothing was imported: {why}"
    return RunStatus.SUCCEEDED, ""


def pool_import(
    *,
    source: str,
    format: str | None = None,
    image_column: str | None = None,
    caption_columns: str | list | None = None,
    caption_source: str = "alt",
    batch_size: int = DEFAULT_BATCH,
    root: str | None = None,
    processes: int | None = None,
    run: ImportRun | None = None,
    progress: Progress | None = None,
) -> ImportRun:
    """Index shards (WebDataset, Parquet, img2dataset files output), a folder or a table in place.

    ``caption_columns`` names one or more columns, each optionally with its CaptionSource:
    ``"title:alt,description:human"`` (a list of such strings works too); columns without a source
    take ``caption_source``. Bad rows and unreadable shards are skipped and reported on the run; an
    import that imported nothing is failed, one that skipped too much or met changed or missing shards
    finished with problems (``run.outcome``). A problem with the whole source raises ``ImportFailed``
    after recording it on the run. ``processes`` (default LOUPE_IMPORT_PROCESSES) index that many
    shards at a time, on PostgreSQL.
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
        options = read_options(
            image_column=image_column, caption_columns=caption_columns, caption_source=caption_source
        )
        if run.format != src.format:
            run.format = src.format
            run.save(update_fields=["format"])
        run_start(run, total=records_estimate(src))
        path_cache_clear()  # links may have changed since the last import in this process
        job = _Job(src=src, options=options, run_id=run.pk, batch_size=batch_size)
        workers = _processes(processes, len(src.units))
        parts = (
            _units_in_processes(job, workers, run, progress)
            if workers > 1
            else _units_here(job, run, progress)
        )
        cancelled = False
        for part in parts:
            summary.merge(part)
            cancelled |= part.cancelled
        if cancelled:
            run_finish(run, status=RunStatus.CANCELLED, summary=summary.as_dict())
            return run
        _vanished(src, summary)
        run.refresh_from_db(fields=["done"])
        run_progress(run, done=run.done, total=run.done, progress=progress)
    except ImportSourceError as exc:
        run_finish(run, status=RunStatus.FAILED, summary=summary.as_dict(), error=str(exc))
        raise ImportFailed(str(exc)) from exc
    except Exception as exc:
        logger.exception("import %s of %s failed", run.pk, source)
        run_finish(
            run, status=RunStatus.FAILED, summary=summary.as_dict(), error=f"{type(exc).__name__}: {exc}"
        )
        raise
    status, error = _outcome(summary)
    run_finish(run, status=status, summary=summary.as_dict(), error=error)
    return run


@dataclass
class _Job:
    """What every shard's indexing needs; plain values, so a worker process can take it."""

    src: ImportSource
    options: object
    run_id: int
    batch_size: int


def _processes(asked: int | None, units: int) -> int:
    import multiprocessing

    from django.db import connection

    wanted = settings.LOUPE_IMPORT_PROCESSES if asked is None else asked
    # SQLite takes one writer at a time; a daemonic process (a Celery prefork child) may not start
    # children; one shard needs one process.
    if connection.vendor != "postgresql" or multiprocessing.current_process().daemon:
        return 1
    return max(1, min(wanted, units))


def _units_here(job: _Job, run: ImportRun, progress: Progress | None) -> Iterator[ImportSummary]:
    loader = _ImageLoader()
    try:
        for unit in job.src.units:
            part = _unit_import(job, unit, loader, run, progress)
            yield part
            if part.cancelled:
                return
    finally:
        loader.close()


def _unit_in_child(job: _Job, unit: Unit) -> ImportSummary:
    """One shard, in a worker process (its own database connection)."""
    run = ImportRun.objects.get(pk=job.run_id)
    loader = _ImageLoader()
    try:
        return _unit_import(job, unit, loader, run, None)
    finally:
        loader.close()


def _child_start() -> None:
    # The parent closed its connections before forking; make sure nothing inherited is reused.
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        conn.connection = None
    path_cache_clear()


def _units_in_processes(job: _Job, workers: int, run: ImportRun, progress: Progress | None):
    """Shards indexed ``workers`` at a time in forked processes (shards are the unit of distribution:
    each commits its own rows; the parent merges their summaries and reports progress)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from django.db import connections

    # A forked child must not share the parent's socket to the database.
    connections.close_all()
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_child_start) as pool:
        pending = {pool.submit(_unit_in_child, job, unit) for unit in job.src.units}
        while pending:
            finished, pending = wait(pending, timeout=2, return_when=FIRST_COMPLETED)
            run.refresh_from_db(fields=["done", "total", "status"])
            if progress:
                progress(run.done, max(run.total, run.done))
            for future in finished:
                part = future.result()
                yield part
                if part.cancelled:
                    for other in pending:
                        other.cancel()
                    pending = set()


def _unit_import(
    job: _Job, unit: Unit, loader: _ImageLoader, run: ImportRun, progress: Progress | None
) -> ImportSummary:
    """Fingerprint one shard, decide whether to index it, index it; its summary."""
    summary = ImportSummary()
    reader = READERS[job.src.format]
    try:
        fp = reader.fingerprint(unit)
    except (storage.StorageError, OSError) as exc:
        _shard_failed(unit, f"cannot be reached: {exc}", run, summary)
        return summary
    shard = _shard_for(unit, fp, run, summary)
    if shard is None:
        return summary
    try:
        _index_unit(unit, shard, job, reader, loader, run, summary, progress)
    except ShardUnreadable as exc:
        _shard_failed(unit, str(exc), run, summary, fp)
    except ImportSourceError as exc:
        if len(job.src.units) == 1:
            raise
        _shard_failed(unit, str(exc), run, summary, fp)
    except _Cancelled:
        summary.cancelled = True
    return summary


def _index_unit(
    unit: Unit,
    shard: Shard,
    job: _Job,
    reader,
    loader: _ImageLoader,
    run: ImportRun,
    summary: ImportSummary,
    progress: Progress | None,
) -> None:
    """Index one shard. Raises ``ShardUnreadable``, ``_Cancelled``."""
    per_shard: Counter = Counter()
    batch: list[_Entry] = []
    read = 0
    for item, loaded in loader.loaded(reader.read(unit, job.src, job.options)):
        read += 1
        if isinstance(item, Skip):
            summary.skip(item)
            continue
        summary.records += 1
        if isinstance(loaded, ImageRejected):
            summary.skip(Skip(item.file, item.row, loaded.code, loaded.message))
            continue
        if item.column and shard.image_column != item.column:
            # Parquet shards: the column the images are read back from.
            shard.image_column = item.column
            shard.save(update_fields=["image_column"])
        batch.append(_Entry(item, loaded, shard.pk))
        if len(batch) >= job.batch_size:
            _index_flush(batch, summary, per_shard)
            batch = []
            # With DEBUG on, Django keeps the last 9000 queries; our bulk inserts are large.
            reset_queries()
            read = _progress_add(run, read, progress)
            if run_cancelled(run):
                raise _Cancelled
    _index_flush(batch, summary, per_shard)
    _progress_add(run, read, progress)
    skipped = summary.skipped_total
    shard.samples = per_shard["indexed"] + per_shard["present"]
    shard.status = ShardStatus.INDEXED
    shard.status_reason = f"{skipped} samples skipped (see the import's summary)" if skipped else ""
    shard.indexed_at = shard.checked_at = timezone.now()
    shard.import_run = run
    shard.save(update_fields=["samples", "status", "status_reason", "indexed_at", "checked_at", "import_run"])
    summary.shards["indexed"] += 1


def _progress_add(run: ImportRun, count: int, progress: Progress | None) -> int:
    """Add ``count`` items to the run's progress (an increment: shards may be indexed in parallel)."""
    if count:
        ImportRun.objects.filter(pk=run.pk).update(done=F("done") + count)
        run.done += count
        if progress:
            progress(run.done, max(run.total, run.done))
    return 0


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
