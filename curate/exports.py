"""Exports of a filter run's kept pairs, streamed in constant memory.

Formats (``Export.Kind``):

- ``parquet``: one file ``pairs.parquet``, a row group per chunk: uid, ids, image path, caption, scores.
- ``webdataset``: tar shards ``00000.tar``, ``00001.tar``, ... of ``shard_size`` samples; each sample is
  ``<key>.<jpg|png|webp|...>`` (the original bytes, no re-encoding), ``<key>.txt`` (the caption) and
  ``<key>.json`` (uid, ids, scores). The key is the pair's uid (hex, no dots), as img2dataset-style
  loaders and the ``webdataset`` library expect.
- ``npy``: ``uids.npy``, DataComp's subset format: a sorted numpy array of dtype ``np.dtype("u8,u8")``
  (the 128-bit uid as two unsigned 64-bit halves, high half first), ready for DataComp's resharder.
- ``jsonl``: ``pairs.jsonl``, one JSON object per pair (same fields as the Parquet rows).
- ``preferences`` / ``coco_hf``: the annotation side's judgments of a campaign (``annotate.exports``),
  not restricted to the filter run's pairs because judgments are per task, not per pair.

The uid of a pair is 32 hex digits: the first 16 of the image's sha256 then the first 16 of the
caption text's sha256 (``pool.models.Caption.uid``).

Every export writes ``manifest.json`` (rule, model, encoder, counts, sha256 of every file) into its
directory. The directory is built under a temporary name beside the target and renamed into place at the
end, so a crash never leaves a half-written export where a reader could take it for a finished one. A
target that already exists is refused unless ``overwrite`` is asked for.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.db import connection
from django.utils import timezone

from curate.filtering import filter_run_kept_ids
from curate.models import Export, FilterRun
from pool.models import Caption, Image, RunStatus
from scoring.models import Score

logger = logging.getLogger(__name__)

CHUNK = 10_000  # kept ids per database round trip (well under SQLite's 32,766 bound parameters)
DEFAULT_SHARD_SIZE = 1_000
MANIFEST = "manifest.json"
UID_DTYPE = np.dtype("u8,u8")
UID_NOTE = (
    "32 hex digits: first 16 of the image sha256, then first 16 of the caption text sha256; "
    "uids.npy holds them as a sorted array of dtype ('u8,u8'), high 64 bits first, as DataComp does"
)

PARQUET_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("caption_id", pa.int64()),
        ("image_id", pa.int64()),
        ("image_sha256", pa.string()),
        ("image_path", pa.string()),
        ("image_file", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("caption", pa.string()),
        ("source", pa.string()),
        ("decision", pa.string()),
        ("reward", pa.float64()),
        ("clipscore", pa.float64()),
        ("cosine", pa.float64()),
        # JSON object text ({"accuracy": 3.2, ...}): criteria differ between reward models.
        ("criteria", pa.string()),
    ]
)
EXTENSIONS = {
    "jpeg": "jpg",
    "jpg": "jpg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "bmp": "bmp",
    "tiff": "tif",
}


class ExportError(ValueError):
    """An export that cannot be made as asked; the message says what to change."""


class ExportLocationExists(ExportError):
    pass


def pair_uid(image_sha256: str, text_sha256: str) -> str:
    return f"{image_sha256[:16]}{text_sha256[:16]}"


def uid_halves(uid: str) -> tuple[int, int]:
    return int(uid[:16], 16), int(uid[16:32], 16)


# --- reading the kept pairs ----------------------------------------------------------------------


def _fill_kept_table(cursor, table: str, ids, vendor: str, chunk: int) -> None:
    """The kept ids into a temporary table, a chunk at a time (COPY on PostgreSQL)."""
    cursor.execute(f"DROP TABLE IF EXISTS {table}")
    cursor.execute(f"CREATE TEMPORARY TABLE {table} (id bigint PRIMARY KEY)")
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        if vendor == "postgresql":
            with cursor.copy(f"COPY {table} (id) FROM STDIN") as copy:
                copy.write("\n".join(map(str, part.tolist())) + "\n")
        else:
            cursor.executemany(f"INSERT INTO {table} (id) VALUES (%s)", [(int(i),) for i in part])
    cursor.execute(f"ANALYZE {table}")


PAIR_COLUMNS = (
    "caption_id",
    "image_id",
    "caption",
    "text_sha256",
    "source",
    "decision",
    "image_sha256",
    "image_file",
    "image_format",
    "width",
    "height",
    "reward",
    "clipscore",
    "cosine",
    "criteria",
)


def _criteria_texts(values) -> list[str | None]:
    return [
        None
        if v is None
        else v.decode()
        if isinstance(v, bytes)
        else v
        if isinstance(v, str)
        else json.dumps(v)
        for v in values
    ]


def pair_records(rows: list[tuple]) -> list[dict]:
    """Rows of ``pair_batches`` as dicts, criteria parsed (one JSON parse per chunk, not per row)."""
    prefix = f"{Path(settings.MEDIA_ROOT)}{os.sep}"
    texts = _criteria_texts(r[14] for r in rows)
    criteria = json.loads("[" + ",".join("null" if t is None else t for t in texts) + "]")
    return [
        {
            "uid": f"{r[6][:16]}{r[3][:16]}",
            "caption_id": r[0],
            "image_id": r[1],
            "image_sha256": r[6],
            "image_path": prefix + r[7],
            "image_file": r[7],
            "image_format": r[8],
            "width": r[9],
            "height": r[10],
            "caption": r[2],
            "source": r[4],
            "decision": r[5],
            "reward": r[11],
            "clipscore": r[12],
            "cosine": r[13],
            "criteria": crit,
        }
        for r, crit in zip(rows, criteria, strict=True)
    ]


def pair_batches(*, filter_run: FilterRun, chunk: int = CHUNK) -> Iterator[list[tuple]]:
    """The kept pairs of ``filter_run`` in caption-id order, ``chunk`` rows at a time (``PAIR_COLUMNS``).

    The kept ids go into a temporary table and one join query is streamed through a server-side
    cursor: per-chunk ``IN`` lists would make the database hash-join the whole score table once per
    chunk, which is quadratic in the pool size.
    """
    ids = filter_run_kept_ids(run=filter_run)
    table = f"loupe_export_kept_{uuid.uuid4().hex[:12]}"
    vendor = connection.vendor
    with connection.cursor() as cursor:
        _fill_kept_table(cursor, table, ids, vendor, chunk)
    sql = (
        "SELECT c.id, c.image_id, c.text, c.text_sha256, c.source, c.decision, i.sha256, i.file, i.format, "
        "i.width, i.height, s.reward, s.clipscore, s.cosine, s.criteria "
        f"FROM {table} k JOIN {Caption._meta.db_table} c ON c.id = k.id "
        f"JOIN {Image._meta.db_table} i ON i.id = c.image_id "
        f"LEFT JOIN {Score._meta.db_table} s ON s.caption_id = c.id AND s.encoder = %s "
        "AND s.reward_model_version = %s ORDER BY c.id"
    )
    try:
        with connection.chunked_cursor() as cursor:
            cursor.execute(sql, [filter_run.encoder, filter_run.reward_model_version])
            while rows := cursor.fetchmany(chunk):
                yield rows
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")


# --- writers -------------------------------------------------------------------------------------


def _write_parquet(directory: Path, batches, progress) -> dict:
    rows = 0
    prefix = f"{Path(settings.MEDIA_ROOT)}{os.sep}"
    with pq.ParquetWriter(directory / "pairs.parquet", PARQUET_SCHEMA, compression="zstd") as writer:
        for batch in batches:
            # Columns straight from the row tuples: no dict per pair on the hot path.
            (cid, image_id, text, text_sha, source, decision, image_sha, file, _fmt, width, height,
             reward, clipscore, cosine, criteria) = zip(*batch, strict=True)  # fmt: skip
            columns = {
                "uid": [f"{a[:16]}{b[:16]}" for a, b in zip(image_sha, text_sha, strict=True)],
                "caption_id": cid,
                "image_id": image_id,
                "image_sha256": image_sha,
                "image_path": [prefix + f for f in file],
                "image_file": file,
                "width": width,
                "height": height,
                "caption": text,
                "source": source,
                "decision": decision,
                "reward": reward,
                "clipscore": clipscore,
                "cosine": cosine,
                "criteria": _criteria_texts(criteria),
            }
            writer.write_table(
                pa.table({k: pa.array(v, type=PARQUET_SCHEMA.field(k).type) for k, v in columns.items()})
            )
            rows += len(batch)
            progress(len(batch))
    return {"pairs": rows}


def _json_record(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "image_format"}


def _write_jsonl(directory: Path, batches, progress) -> dict:
    rows = 0
    with open(directory / "pairs.jsonl", "w", encoding="utf-8") as handle:
        for batch in batches:
            handle.writelines(
                json.dumps(_json_record(r), ensure_ascii=False) + "\n" for r in pair_records(batch)
            )
            rows += len(batch)
            progress(len(batch))
    return {"pairs": rows}


def _write_npy(directory: Path, batches, progress, total: int) -> dict:
    # A memory-mapped output grows on disk, not in memory; sorting it at the end is what DataComp expects.
    uids = np.lib.format.open_memmap(directory / "uids.npy", mode="w+", dtype=UID_DTYPE, shape=(total,))
    rows = 0
    for batch in batches:
        for record in pair_records(batch):
            uids[rows] = uid_halves(record["uid"])
            rows += 1
        progress(len(batch))
    if rows != total:
        raise ExportError(
            f"Expected {total} kept pairs but found {rows}: the pool changed during the export."
        )
    uids.sort()
    uids.flush()
    del uids
    return {"pairs": rows}


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # identical input gives byte-identical shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_webdataset(directory: Path, batches, progress, shard_size: int) -> dict:
    shard = written = in_shard = 0
    skipped: list[str] = []
    skipped_count = 0
    tar: tarfile.TarFile | None = None
    try:
        for batch in batches:
            for record in pair_records(batch):
                path = Path(record["image_path"])
                try:
                    image = path.read_bytes()
                except OSError as exc:
                    skipped_count += 1
                    if len(skipped) < 20:
                        skipped.append(f"caption {record['caption_id']}: cannot read {path} ({exc.strerror})")
                    continue
                if tar is None or in_shard >= shard_size:
                    if tar is not None:
                        tar.close()
                        shard += 1
                    tar = tarfile.open(directory / f"{shard:05d}.tar", "w")  # noqa: SIM115 - closed when the shard fills
                    in_shard = 0
                key = record["uid"]
                ext = EXTENSIONS.get((record["image_format"] or path.suffix.lstrip(".")).lower(), "jpg")
                _tar_add(tar, f"{key}.{ext}", image)
                _tar_add(tar, f"{key}.txt", record["caption"].encode("utf-8"))
                meta = {k: v for k, v in _json_record(record).items() if k not in ("caption",)}
                meta["key"] = key
                _tar_add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                written += 1
                in_shard += 1
            progress(len(batch))
    finally:
        if tar is not None:
            tar.close()
    return {
        "pairs": written,
        "shards": shard + 1 if written else 0,
        "shard_size": shard_size,
        "skipped": skipped_count,
        "skipped_examples": skipped,
    }


def _write_annotation(directory: Path, kind: str, campaign_id: int | None) -> dict:
    try:
        from annotate.exports import judgments_coco_hf, preference_pairs_jsonl
    except ImportError as exc:
        raise ExportError(
            "The annotation exports (annotate.exports) are not available in this build."
        ) from exc
    from annotate.models import Campaign

    campaign = Campaign.objects.filter(pk=campaign_id).first() if campaign_id else None
    if campaign is None:
        raise ExportError(f"The {kind} export needs a campaign: campaign id {campaign_id!r} was not found.")
    if kind == Export.Kind.PREFERENCES:
        with open(directory / "preferences.jsonl", "w", encoding="utf-8") as handle:
            return {
                "lines": preference_pairs_jsonl(campaign=campaign, stream=handle),
                "campaign": campaign.name,
            }
    with open(directory / "coco_hf.json", "w", encoding="utf-8") as handle:
        return {"tasks": judgments_coco_hf(campaign=campaign, stream=handle), "campaign": campaign.name}


# --- service -------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def export_create(
    *,
    kind: str,
    filter_run: FilterRun | None,
    out: str | Path | None = None,
    overwrite: bool = False,
    user=None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    campaign_id: int | None = None,
) -> Export:
    """Check the request and record the export (status queued); ``export_execute`` writes it."""
    if kind not in Export.Kind.values:
        raise ExportError(f"Unknown export kind {kind!r}: choose one of {', '.join(Export.Kind.values)}.")
    pair_kind = kind not in (Export.Kind.PREFERENCES, Export.Kind.COCO_HF)
    if pair_kind:
        if filter_run is None:
            raise ExportError(f"A {kind} export needs a filter run.")
        if filter_run.status != RunStatus.SUCCEEDED:
            raise ExportError(f"Filter run {filter_run.pk} has not succeeded (status {filter_run.status}).")
    if shard_size < 1:
        raise ExportError("shard_size must be at least 1.")
    if out is not None:
        target = Path(out).expanduser().resolve()
        if target.exists() and not overwrite:
            raise ExportLocationExists(
                f"{target} already exists: choose another location or ask to overwrite it."
            )
    export = Export.objects.create(
        kind=kind,
        filter_run=filter_run,
        path=str(target) if out is not None else "",
        params={"overwrite": overwrite, "shard_size": shard_size, "campaign_id": campaign_id},
        created_by=user,
    )
    if out is None:
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        name = (
            f"export-{export.pk}-{kind}"
            + (f"-filter-run-{filter_run.pk}" if filter_run else "")
            + f"-{stamp}"
        )
        export.path = str((Path(settings.EXPORT_DIR) / name).resolve())
        export.save(update_fields=["path"])
    return export


def export_execute(*, export: Export) -> Export:
    """Write the export into a temporary directory, then rename it into place with its manifest."""
    if export.status == RunStatus.SUCCEEDED:
        return export
    target = Path(export.path)
    overwrite = bool(export.params.get("overwrite"))
    if target.exists() and not overwrite:
        export.status, export.error = (
            RunStatus.FAILED,
            f"{target} already exists and overwrite was not asked for.",
        )
        export.finished_at = timezone.now()
        export.save(update_fields=["status", "error", "finished_at"])
        raise ExportLocationExists(export.error)
    run = export.filter_run
    pair_kind = export.kind not in (Export.Kind.PREFERENCES, Export.Kind.COCO_HF)
    export.status, export.started_at, export.error, export.done = RunStatus.RUNNING, timezone.now(), "", 0
    export.total = int(run.kept) if (run and pair_kind) else 0
    export.save(update_fields=["status", "started_at", "error", "done", "total"])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()

    def progress(n: int) -> None:
        export.done += n
        Export.objects.filter(pk=export.pk).update(done=export.done)

    try:
        if pair_kind:
            batches = pair_batches(filter_run=run)
            if export.kind == Export.Kind.PARQUET:
                counts = _write_parquet(tmp, batches, progress)
            elif export.kind == Export.Kind.JSONL:
                counts = _write_jsonl(tmp, batches, progress)
            elif export.kind == Export.Kind.NPY:
                counts = _write_npy(tmp, batches, progress, total=int(run.kept))
            else:
                counts = _write_webdataset(
                    tmp, batches, progress, int(export.params.get("shard_size") or DEFAULT_SHARD_SIZE)
                )
        else:
            counts = _write_annotation(tmp, export.kind, export.params.get("campaign_id"))
        files = [
            {"name": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        ]
        manifest = {
            "format": "loupe-export/1",
            "export_id": export.pk,
            "kind": export.kind,
            "created_at": timezone.now().isoformat(),
            "uid": UID_NOTE,
            "counts": counts,
            "files": files,
        }
        if run is not None:
            manifest["filter_run"] = {
                "id": run.pk,
                "rule": run.rule,
                "rule_text": run.summary.get("rule_text") or run.params.get("rule_text", ""),
                "encoder": run.encoder,
                "reward_model_version": run.reward_model_version,
                "considered": run.considered,
                "kept": run.kept,
                "compression_ratio": run.compression_ratio,
                "summary": run.summary,
            }
            manifest["encoder"] = run.encoder
            manifest["reward_model_version"] = run.reward_model_version
            if (run.summary or {}).get("downstream", {}).get("status") == "succeeded":
                # The evidence that this subset trains better than a random one (curate/downstream.py).
                manifest["downstream"] = run.summary["downstream"]
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        if target.exists():
            # overwrite: swap the old export out first, so a crash here leaves the old or the new one.
            trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        logger.exception("export %s failed", export.pk)
        export.status, export.error, export.finished_at = (
            RunStatus.FAILED,
            f"{type(exc).__name__}: {exc}",
            timezone.now(),
        )
        export.save(update_fields=["status", "error", "finished_at"])
        raise
    export.manifest = manifest
    export.status, export.finished_at = RunStatus.SUCCEEDED, timezone.now()
    if not export.total:
        export.total = export.done = counts.get("pairs") or counts.get("lines") or counts.get("tasks") or 0
    export.save()
    return export


def export_file_path(*, export: Export, name: str) -> Path:
    """The path of one file of a finished export, refusing anything outside ``EXPORT_DIR``."""
    root = Path(settings.EXPORT_DIR).resolve()
    path = (Path(export.path) / name).resolve()
    if not path.is_relative_to(root):
        raise PermissionError(f"{path} is outside the export folder {root}; download it on the server.")
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not a file of export {export.pk}.")
    return path
