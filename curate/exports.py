"""Exports of a filter run's kept pairs, streamed in constant memory.

Formats (``Export.Kind``):

- ``parquet``: one file ``pairs.parquet``, a row group per chunk: uid, the source's key, url, shard and
  metadata (JSON text per row: original size, the source's sha256, every extra column; the columns
  differ between sources), where the image's bytes are, ids, caption, scores; ``criteria`` is a struct
  with one float field per criterion of the reward model (null without one).
- ``webdataset``: tar shards ``00000.tar``, ``00001.tar``, ... of ``shard_size`` samples; each sample is
  ``<key>.<jpg|png|webp|...>`` (the original bytes, read where they live, no re-encoding), ``<key>.txt``
  (the caption) and ``<key>.json`` (uid, the source's key, url and metadata, ids, scores). The sample
  key is the pair's uid (hex, no dots: unique, where source keys repeat across img2dataset runs); the
  source's key is in the ``.json``. The manifest says so (``keys``). ``sizes.json`` (``{"00000.tar": n,
  ...}``) gives the samples per shard, which open_clip's training reads to size an epoch.
- ``npy``: ``uids.npy``, DataComp's subset format: a sorted numpy array of dtype ``np.dtype("u8,u8")``
  (the 128-bit uid as two unsigned 64-bit halves, high half first), ready for DataComp's resharder:
  with source uids, it selects the kept samples from the user's own shards.
- ``jsonl``: ``pairs.jsonl``, one JSON object per pair (same fields and types as the Parquet rows; its
  ``metadata`` is an object).

Shipped files name images by where the user's own data keeps them (``image_path`` for a file indexed in
place, ``shard`` + ``offset``/``length`` or ``row_group``/``row`` for shards) or by their path relative to
Loupe's media folder (``image_file`` for copied images), and weights files by their name only: nothing
inside them is an absolute path of the Loupe server.
- ``preferences`` / ``coco_hf``: the annotation side's judgments of a campaign (``annotate.exports``),
  not restricted to the filter run's pairs because judgments are per task, not per pair.

The uid of a pair is the source's (``pool.models.Caption.uid``: img2dataset/DataComp 32 hex digits);
for pairs whose source had none, it is derived: the first 16 hex digits of the image's sha256 then the
first 16 of the caption text's sha256. The manifest's ``uid_source`` says which (``source``, ``derived``
or ``mixed``, with counts).

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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.db import connection
from django.utils import timezone

from annotate.models import Campaign
from curate.filtering import copy_blocks, filter_run_kept_ids
from curate.lineage import campaign_lineage, filter_run_lineage
from curate.models import Export, FilterRun
from pool.locate import locator_from_values
from pool.models import Caption, Image, RunStatus, Shard, pair_uid_derive
from pool.storage import StorageError, locator_read
from scoring.encoder_names import encoder_name_public
from scoring.models import Score, VlmScore
from scoring.selectors import model_scores

logger = logging.getLogger(__name__)

CHUNK = 10_000  # kept ids per database round trip (well under SQLite's 32,766 bound parameters)
DEFAULT_SHARD_SIZE = 1_000
MANIFEST = "manifest.json"
UID_DTYPE = np.dtype("u8,u8")
UID_NOTE = (
    "32 hex digits: the source's uid (img2dataset/DataComp) where it had one, else derived: first 16 of "
    "the image sha256, then first 16 of the caption text sha256 (see uid_source); uids.npy holds them as "
    "a sorted array of dtype ('u8,u8'), high 64 bits first, as DataComp does"
)
WEBDATASET_KEYS = (
    "each sample's key is its pair uid (unique and dot-free); the source's own key is the 'key' field "
    "of its .json"
)

PARQUET_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("uid_source", pa.string()),  # source / derived
        ("key", pa.string()),  # the source's
        ("url", pa.string()),
        # The source's other columns (original_width/height, its sha256, extra columns): a JSON object.
        ("metadata", pa.string()),
        ("caption_id", pa.int64()),
        ("image_id", pa.int64()),
        ("image_sha256", pa.string()),
        # Where the bytes are in the user's data: a file indexed in place (image_path), a range of a
        # shard (shard, offset, length) or a Parquet cell of a shard (shard, row_group, row); images
        # copied into Loupe's media store have only their relative image_file.
        ("image_path", pa.string()),
        ("image_file", pa.string()),
        ("shard", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("row_group", pa.int32()),
        ("row", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("caption", pa.string()),
        ("source", pa.string()),
        ("decision", pa.string()),
        ("reward", pa.float64()),
        ("clipscore", pa.float64()),
        ("cosine", pa.float64()),
        # Replaced per export by a struct of the reward model's criteria (``_parquet_schema``).
        ("criteria", pa.null()),
        # MLM-Filter's four metrics (0-100) from the multimodal judge named in the manifest; null where
        # it has not judged the pair (a judge scores a band, not the pool).
        ("judge_itm", pa.float64()),
        ("judge_odf", pa.float64()),
        ("judge_ctq", pa.float64()),
        ("judge_su", pa.float64()),
    ]
)
# Internal to the writers (the webdataset writer picks the extension from it); never written into a file.
SERVER_ONLY_FIELDS = ("image_format",)


def _parquet_schema(criteria_keys: list[str]) -> pa.Schema:
    """Criteria as a struct (one float per criterion), the type JSONL's object has when read back;
    null when the scores have no criteria (CLIPScore only)."""
    kind = pa.struct([(key, pa.float64()) for key in criteria_keys]) if criteria_keys else pa.null()
    index = PARQUET_SCHEMA.get_field_index("criteria")
    return PARQUET_SCHEMA.set(index, pa.field("criteria", kind))


def _criteria_keys(filter_run: FilterRun) -> list[str]:
    sample = (
        model_scores(
            encoder=filter_run.encoder,
            reward_model_version=filter_run.reward_model_version,
            encoder_fingerprint=filter_run.encoder_fingerprint,
        )
        .filter(criteria__isnull=False)
        .values_list("criteria", flat=True)
        .first()
    )
    return sorted(sample) if isinstance(sample, dict) else []


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
    """The derived uid (for pairs whose source had none): ``pool.models.pair_uid_derive``."""
    return pair_uid_derive(image_sha256, text_sha256)


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
    "uid",
    "uid_derived",
    "key",
    "url",
    "meta",
    "image_uri",
    "shard",
    "offset",
    "length",
    "row_group",
    "row",
    "image_column",
    "judge_itm",
    "judge_odf",
    "judge_ctq",
    "judge_su",
)
_COL = {name: i for i, name in enumerate(PAIR_COLUMNS)}


def _json_texts(values) -> list[str | None]:
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


def _row_uid(r: tuple) -> tuple[str, bool]:
    """(uid, derived?) of a pair row: rows written before uids were stored derive it as they did."""
    uid = r[_COL["uid"]]
    if uid:
        return uid, bool(r[_COL["uid_derived"]])
    return pair_uid_derive(r[_COL["image_sha256"]], r[_COL["text_sha256"]]), True


def _image_path(r: tuple) -> str | None:
    """The user's own file for an image indexed in place; None for an image copied into Loupe's media
    store (its ``image_file`` is relative to that store: no server path is shipped)."""
    return r[_COL["image_uri"]] or None


def pair_locator(r: tuple):
    return locator_from_values(
        r[_COL["image_sha256"]],
        r[_COL["image_file"]],
        r[_COL["image_uri"]] or "",
        r[_COL["shard"]],
        r[_COL["offset"]],
        r[_COL["length"]],
        r[_COL["row_group"]],
        r[_COL["row"]],
        r[_COL["image_column"]],
    )


def pair_records(rows: list[tuple]) -> list[dict]:
    """Rows of ``pair_batches`` as dicts, JSON columns parsed (one parse per chunk, not per row)."""
    texts = _json_texts(r[_COL["criteria"]] for r in rows)
    criteria = json.loads("[" + ",".join("null" if t is None else t for t in texts) + "]")
    metas = _json_texts(r[_COL["meta"]] for r in rows)
    metadata = json.loads("[" + ",".join("null" if t is None else t for t in metas) + "]")
    out = []
    for r, crit, meta in zip(rows, criteria, metadata, strict=True):
        uid, derived = _row_uid(r)
        out.append(
            {
                "uid": uid,
                "uid_source": "derived" if derived else "source",
                "key": r[_COL["key"]] or "",
                "url": r[_COL["url"]] or "",
                "metadata": meta or {},
                "caption_id": r[0],
                "image_id": r[1],
                "image_sha256": r[6],
                "image_path": _image_path(r),
                "image_file": r[7],
                "shard": r[_COL["shard"]],
                "offset": r[_COL["offset"]],
                "length": r[_COL["length"]],
                "row_group": r[_COL["row_group"]],
                "row": r[_COL["row"]],
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
                "judge_itm": r[_COL["judge_itm"]],
                "judge_odf": r[_COL["judge_odf"]],
                "judge_ctq": r[_COL["judge_ctq"]],
                "judge_su": r[_COL["judge_su"]],
            }
        )
    return out


def export_judge_identity(filter_run: FilterRun) -> str:
    """Whose MLM-Filter metrics an export carries: the judge the rule used, else the latest judge (its
    identity is in the manifest either way); "" when no judge has scored anything."""
    identity = (filter_run.rule or {}).get("vlm_fingerprint")
    if identity:
        return identity
    latest = VlmScore.objects.exclude(scorer_fingerprint="").order_by("-updated_at").first()
    return latest.scorer_fingerprint if latest else ""


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
        "i.width, i.height, s.reward, s.clipscore, s.cosine, s.criteria, "
        "c.uid, c.uid_derived, c.key, c.url, c.meta, "
        "i.uri, sh.uri, i.offset, i.length, i.row_group, i.row, sh.image_column, "
        "v.itm, v.odf, v.ctq, v.su "
        f"FROM {table} k JOIN {Caption._meta.db_table} c ON c.id = k.id "
        f"JOIN {Image._meta.db_table} i ON i.id = c.image_id "
        f"LEFT JOIN {Shard._meta.db_table} sh ON sh.id = i.shard_id "
        f"LEFT JOIN {Score._meta.db_table} s ON s.caption_id = c.id AND s.encoder = %s "
        "AND s.encoder_fingerprint = %s AND s.reward_model_version = %s "
        f"LEFT JOIN {VlmScore._meta.db_table} v ON v.caption_id = c.id AND v.scorer_fingerprint = %s "
        "ORDER BY c.id"
    )
    # The scores of the weights the filter run recorded: a later rescore with replaced weights wrote
    # other rows, so the export carries exactly the numbers the run was computed from.
    key = [
        filter_run.encoder,
        filter_run.encoder_fingerprint,
        filter_run.reward_model_version,
        export_judge_identity(filter_run),
    ]
    try:
        with connection.chunked_cursor() as cursor:
            cursor.execute(sql, key)
            while rows := cursor.fetchmany(chunk):
                yield rows
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")


# --- writers -------------------------------------------------------------------------------------


def _write_parquet(directory: Path, batches, progress, uids: Counter, criteria_keys: list[str]) -> dict:
    rows = 0
    schema = _parquet_schema(criteria_keys)
    with pq.ParquetWriter(directory / "pairs.parquet", schema, compression="zstd") as writer:
        for batch in batches:
            records = pair_records(batch)
            for record in records:
                uids[record["uid_source"]] += 1
            columns = {
                name: [
                    json.dumps(r["metadata"], ensure_ascii=False)
                    if name == "metadata"
                    else (r["criteria"] if criteria_keys else None)
                    if name == "criteria"
                    else r[name]
                    for r in records
                ]
                for name in schema.names
            }
            writer.write_table(
                pa.table(
                    {k: pa.array(v, type=schema.field(k).type) for k, v in columns.items()}, schema=schema
                )
            )
            rows += len(batch)
            progress(len(batch))
    return {"pairs": rows}


def _json_record(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in SERVER_ONLY_FIELDS}


def _write_jsonl(directory: Path, batches, progress, uids: Counter) -> dict:
    rows = 0
    with open(directory / "pairs.jsonl", "w", encoding="utf-8") as handle:
        for batch in batches:
            records = pair_records(batch)
            for record in records:
                uids[record["uid_source"]] += 1
            handle.writelines(json.dumps(_json_record(r), ensure_ascii=False) + "\n" for r in records)
            rows += len(batch)
            progress(len(batch))
    return {"pairs": rows}


def _write_npy(directory: Path, batches, progress, total: int, sources: Counter) -> dict:
    # A memory-mapped output grows on disk, not in memory; sorting it at the end is what DataComp expects.
    uids = np.lib.format.open_memmap(directory / "uids.npy", mode="w+", dtype=UID_DTYPE, shape=(total,))
    rows = 0
    for batch in batches:
        for r in batch:
            uid, derived = _row_uid(r)
            sources["derived" if derived else "source"] += 1
            uids[rows] = uid_halves(uid)
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


def _fill_kept_table_binary(cursor, table: str, ids: np.ndarray, chunk: int = 1_000_000) -> None:
    """The kept ids into a temporary table with one binary COPY (numpy builds the rows: no Python
    string per id), then ANALYZE so the join below is planned on the real size."""
    cursor.execute(f"DROP TABLE IF EXISTS {table}")
    cursor.execute(f"CREATE TEMPORARY TABLE {table} (id bigint)")
    row_type = np.dtype([("n", ">i2"), ("length", ">i4"), ("id", ">i8")])
    with cursor.cursor.copy(f"COPY {table} (id) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(b"PGCOPY\n\xff\r\n\x00" + bytes(8))  # signature, flags, header extension length
        for start in range(0, len(ids), chunk):
            part = np.asarray(ids[start : start + chunk], dtype=np.int64)
            rows = np.empty(part.size, dtype=row_type)
            rows["n"], rows["length"], rows["id"] = 1, 8, part
            copy.write(rows.tobytes())
        copy.write(b"\xff\xff")
    cursor.execute(f"ANALYZE {table}")


_UID_LINE = 34  # 32 hex digits, a flag (s: source, d: derived, n: none stored), a newline


def _write_npy_copy(directory: Path, filter_run: FilterRun, progress, total: int, sources: Counter) -> dict:
    """``uids.npy`` on PostgreSQL: the kept ids go into a temporary table by binary COPY, the uids come
    back by one text COPY of fixed-width lines, and ``bytes.fromhex`` turns a block of them into the
    two uint64 halves at C speed. No Python object per pair; memory is the output array."""
    ids = filter_run_kept_ids(run=filter_run)
    if ids.size != total:
        raise ExportError(
            f"Expected {total} kept pairs but the run's kept file has {ids.size}: run the filter again."
        )
    table = f"loupe_export_kept_{uuid.uuid4().hex[:12]}"
    uids = np.lib.format.open_memmap(directory / "uids.npy", mode="w+", dtype=UID_DTYPE, shape=(total,))
    halves = uids.view(np.uint64).reshape(total, 2) if total else np.zeros((0, 2), dtype=np.uint64)
    caption = Caption._meta.db_table
    rows = 0
    placeholders: list[int] = []  # rows whose uid is derived below
    try:
        with connection.cursor() as cursor:
            _fill_kept_table_binary(cursor, table, ids)
            # A uid shorter or longer than 32 characters would break the fixed width: such rows are
            # sent as "n" too and derived below (the source's uid is 32 hex digits by definition).
            sql = (
                "COPY (SELECT CASE WHEN length(c.uid) = 32 THEN c.uid ELSE repeat('0', 32) END "
                "|| CASE WHEN c.uid IS NULL OR length(c.uid) <> 32 THEN 'n' "
                "WHEN c.uid_derived THEN 'd' ELSE 's' END "
                f"FROM {table} k JOIN {caption} c ON c.id = k.id) TO STDOUT"
            )
            pending = b""
            with cursor.cursor.copy(sql) as copy:
                for block in copy_blocks(copy):
                    pending += block
                    whole = len(pending) // _UID_LINE * _UID_LINE
                    if not whole:
                        continue
                    lines = np.frombuffer(pending[:whole], dtype=np.uint8).reshape(-1, _UID_LINE)
                    pending = pending[whole:]
                    n = lines.shape[0]
                    if rows + n > total:
                        raise ExportError(
                            "More kept pairs than expected: the pool changed during the export."
                        )
                    flags = lines[:, 32]
                    sources["source"] += int((flags == ord("s")).sum())
                    sources["derived"] += int((flags == ord("d")).sum())
                    placeholders.extend((rows + np.flatnonzero(flags == ord("n"))).tolist())
                    raw = bytes.fromhex(lines[:, :32].tobytes().decode("ascii"))
                    halves[rows : rows + n] = np.frombuffer(raw, dtype=">u8").reshape(n, 2)
                    rows += n
            # The connection is busy while COPY streams: progress is reported once it has ended.
            progress(rows)
            if pending:
                raise ExportError("The uid stream ended mid-line: the pool changed during the export.")
            if placeholders:
                # Rows without a stored 32-digit uid: derive theirs as ``_row_uid`` does.
                cursor.execute(
                    "SELECT c.uid, c.uid_derived, i.sha256, c.text_sha256 "
                    f"FROM {table} k JOIN {caption} c ON c.id = k.id "
                    f"JOIN {Image._meta.db_table} i ON i.id = c.image_id "
                    "WHERE c.uid IS NULL OR length(c.uid) <> 32"
                )
                derived = cursor.fetchall()
                if len(derived) != len(placeholders):
                    raise ExportError("The pool changed during the export.")
                for slot, (uid, was_derived, image_sha, text_sha) in zip(placeholders, derived, strict=True):
                    if uid:
                        value, is_derived = uid, bool(was_derived)
                    else:
                        value, is_derived = pair_uid_derive(image_sha, text_sha), True
                    halves[slot] = uid_halves(value)
                    sources["derived" if is_derived else "source"] += 1
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
    if rows != total:
        raise ExportError(
            f"Expected {total} kept pairs but found {rows}: the pool changed during the export."
        )
    if total:
        order = np.lexsort((halves[:, 1], halves[:, 0]))  # by the high half, then the low half
        halves[:] = halves[order]
    uids.flush()
    del uids, halves
    return {"pairs": rows}


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # identical input gives byte-identical shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_webdataset(directory: Path, batches, progress, shard_size: int, uids: Counter) -> dict:
    shard = written = in_shard = 0
    sizes: dict[str, int] = {}
    skipped: list[str] = []
    skipped_count = 0
    tar: tarfile.TarFile | None = None
    try:
        for batch in batches:
            for row, record in zip(batch, pair_records(batch), strict=True):
                locator = pair_locator(row)
                try:
                    # Read where it lives, checked against its sha256: a changed shard is not exported.
                    image = locator_read(locator)
                except StorageError as exc:
                    skipped_count += 1
                    if len(skipped) < 20:
                        skipped.append(f"caption {record['caption_id']}: {exc}")
                    continue
                uids[record["uid_source"]] += 1
                if tar is None or in_shard >= shard_size:
                    if tar is not None:
                        tar.close()
                        shard += 1
                    tar = tarfile.open(directory / f"{shard:05d}.tar", "w")  # noqa: SIM115 - closed when the shard fills
                    in_shard = 0
                key = record["uid"]
                ext = EXTENSIONS.get((record["image_format"] or "jpg").lower(), "jpg")
                _tar_add(tar, f"{key}.{ext}", image)
                _tar_add(tar, f"{key}.txt", record["caption"].encode("utf-8"))
                # "key" stays the source's own key (see the manifest's "keys").
                meta = {k: v for k, v in _json_record(record).items() if k not in ("caption",)}
                _tar_add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                written += 1
                in_shard += 1
                sizes[f"{shard:05d}.tar"] = in_shard
            progress(len(batch))
    finally:
        if tar is not None:
            tar.close()
    (directory / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True))
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
        stats: dict = {}
        with open(directory / "preferences.jsonl", "w", encoding="utf-8") as handle:
            lines = preference_pairs_jsonl(campaign=campaign, stream=handle, stats=stats)
        # What the file covers (judgments, tasks, ties left out) and its format, for the manifest.
        return {"lines": lines, "campaign": campaign.name, **stats}
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
        uid_counts: Counter = Counter()
        if pair_kind:
            batches = pair_batches(filter_run=run)
            if export.kind == Export.Kind.PARQUET:
                counts = _write_parquet(tmp, batches, progress, uid_counts, _criteria_keys(run))
            elif export.kind == Export.Kind.JSONL:
                counts = _write_jsonl(tmp, batches, progress, uid_counts)
            elif export.kind == Export.Kind.NPY and connection.vendor == "postgresql":
                counts = _write_npy_copy(tmp, run, progress, int(run.kept), uid_counts)
            elif export.kind == Export.Kind.NPY:
                counts = _write_npy(tmp, batches, progress, int(run.kept), uid_counts)
            else:
                counts = _write_webdataset(
                    tmp,
                    batches,
                    progress,
                    int(export.params.get("shard_size") or DEFAULT_SHARD_SIZE),
                    uid_counts,
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
        if pair_kind:
            kinds = [k for k in ("source", "derived") if uid_counts.get(k)]
            manifest["uid_source"] = kinds[0] if len(kinds) == 1 else ("mixed" if kinds else "none")
            manifest["uid_counts"] = dict(uid_counts)
            if export.kind == Export.Kind.WEBDATASET:
                manifest["keys"] = WEBDATASET_KEYS
        if run is not None:
            manifest["filter_run"] = {
                "id": run.pk,
                "rule": run.rule,
                "rule_text": run.summary.get("rule_text") or run.params.get("rule_text", ""),
                "encoder": encoder_name_public(run.encoder),
                "reward_model_version": run.reward_model_version,
                "considered": run.considered,
                "kept": run.kept,
                "compression_ratio": run.compression_ratio,
                "summary": run.summary,
            }
            manifest["encoder"] = encoder_name_public(run.encoder)
            manifest["reward_model_version"] = run.reward_model_version
            # The exact weights and checkpoint behind the scores, and the judgments behind the model.
            manifest["models"] = filter_run_lineage(run)
            if (run.summary or {}).get("downstream", {}).get("status") == "succeeded":
                # The evidence that this subset trains better than a random one (curate/downstream.py).
                manifest["downstream"] = run.summary["downstream"]
        elif export.params.get("campaign_id"):
            campaign = Campaign.objects.filter(pk=export.params["campaign_id"]).first()
            if campaign is not None:
                manifest["lineage"] = campaign_lineage(campaign)
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
