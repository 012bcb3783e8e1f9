"""What every reader shares: the shards (``Unit``) it reads, the records and skips it yields, the
caption and identity helpers, and the ``Reader`` protocol each format module implements
(``webdataset``, ``table`` for Parquet/CSV/JSONL, ``files`` for img2dataset's files output, ``folder``).

A reader is a generator over one unit that yields ``Record`` (where an image's bytes are, the bytes
when it had to read them anyway, its captions and the source's identity of the sample) or ``Skip``
(file, row, reason), and holds at most one sample (or one Parquet record batch, or one shard's
metadata table) in memory, so the size of a pool never changes how much memory an import takes.
Readers never touch the database and never decode images: ``pool.importing`` writes rows.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from django.conf import settings

if TYPE_CHECKING:
    from pool.readers.sources import ImportSource

FORMATS = ("webdataset", "parquet", "files", "folder", "csv", "jsonl")
CAPTION_SOURCES = ("alt", "synthetic", "model", "rewrite", "human")

# Autodetection order: the first name present in the table wins. A binary column holds the image
# itself (img2dataset's parquet output names it after the encode format: ``jpg``).
IMAGE_BYTES_COLUMN_CANDIDATES = ("jpg", "jpeg", "png", "webp", "image", "image_bytes", "img")
IMAGE_COLUMN_CANDIDATES = ("image", "image_path", "path", "filepath", "file_path", "file", "filename")
CAPTION_COLUMN_CANDIDATES = ("caption", "captions", "text", "alt", "alt_text", "title", "description")
JSON_CAPTION_KEYS = ("caption", "captions", "text")
# img2dataset writes every URL it tried into the metadata: failed ones with ``status`` other than
# ``success`` and the reason in ``error_message``.
STATUS_COLUMN, ERROR_COLUMN, STATUS_SUCCESS = "status", "error_message", "success"
# The sample's identity: kept in their own fields, not in the metadata.
IDENTITY_COLUMNS = ("uid", "key", "url")
UID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
TABLE_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
TAR_SUFFIXES = (".tar",)
PARQUET_BATCH_ROWS = 2048
# A caption sidecar (``.txt``/``.json``) bigger than this is refused unread: a caption is capped at
# LOUPE_MAX_CAPTION_CHARS anyway, and a huge "sidecar" is a mistake or an attack.
MAX_SIDECAR_BYTES = 1 << 20

# Python's default (128 KiB) would make one huge caption abort the whole CSV instead of being capped.
csv.field_size_limit(1 << 28)


class ImportSourceError(Exception):
    """A problem with the whole source (missing file, missing column): the import cannot start."""


class ShardUnreadable(Exception):
    """A problem with one shard (unreachable, not a tar, garbage Parquet): reported on its Shard row;
    the other shards import."""


@dataclass
class Unit:
    """One shard of a source: the unit of indexing, of fingerprints and of change detection."""

    uri: str  # the .tar, the .parquet, the files folder, the folder, the table
    format: str
    metadata_uri: str = ""  # img2dataset's NNNNN.parquet beside a .tar or a files folder

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class CaptionIn:
    text: str
    source: str
    status: str = "ok"
    reason: str = ""


@dataclass
class Record:
    unit: str  # the shard's URI
    key: str  # the image's key inside its shard (tar key, file path, row)
    file: str  # for messages: the file (name) ...
    row: int | str | None  # ... and the row, line or key within it
    captions: list[CaptionIn] = field(default_factory=list)
    # Where the bytes are. ``data`` is set when the reader read them anyway (a tar member streamed
    # past, a Parquet cell); the importer hashes them and reads the header, never keeps them.
    data: bytes | None = None
    path: str | None = None  # a file of its own (local path or URI)
    # Set for paths taken from a table: the loader resolves them and refuses any outside this root.
    root: Path | None = None
    offset: int | None = None  # a tar member's data ...
    length: int | None = None  # ... and its size
    row_group: int | None = None  # a Parquet cell
    row_in_group: int | None = None
    column: str | None = None  # the Parquet column holding the image
    # The source's identity of the sample.
    uid: str | None = None
    sample_key: str = ""
    url: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def locator(self) -> str:
        return f"{self.file}:{self.row}" if self.row is not None else self.file


@dataclass
class Skip:
    file: str
    row: int | str | None
    code: str  # summary bucket, e.g. "not_utf8", "missing_caption"
    reason: str  # for people

    def as_dict(self) -> dict:
        return {"file": self.file, "row": self.row, "code": self.code, "reason": self.reason}


class CaptionProblem(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ReadOptions:
    """What the person asked for: only tables use the columns; every format uses ``caption_source``."""

    image_column: str | None = None
    caption_columns: list[tuple[str, str]] = field(default_factory=list)
    caption_source: str = "alt"


class Reader(Protocol):
    """One per format family; each format module is one (``READERS`` in ``pool.readers`` maps formats)."""

    def units(self, src: ImportSource) -> list[Unit]:
        """The shards of the source, in order."""

    def fingerprint(self, unit: Unit) -> dict:
        """What tells this shard's bytes from any later version of them (sizes, mtimes or ETags,
        Parquet footers); raises ``pool.storage.StorageError`` when the shard cannot be reached."""

    def estimate(self, unit: Unit) -> int:
        """How many records the shard holds, cheaply (headers only); 0 when unknown."""

    def read(self, unit: Unit, src: ImportSource, options: ReadOptions) -> Iterator[Record | Skip]:
        """Records and skips, in shard order. Raises ``ShardUnreadable`` when the shard cannot be read
        at all; damage found midway is a ``Skip`` after what was read before it."""


# --- captions -------------------------------------------------------------------------------------


def caption_prepare(value, *, source: str, max_chars: int | None = None) -> CaptionIn:
    """Turn one raw caption (str or bytes) into a ``CaptionIn``: decoded, stripped, capped and marked.

    Empty captions are kept and marked ``empty`` (cleaning marks, it never deletes); captions over the
    limit keep their first ``max_chars`` characters and are marked ``too_long``.
    """
    limit = settings.LOUPE_MAX_CAPTION_CHARS if max_chars is None else max_chars
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CaptionProblem("not_utf8", f"caption is not valid UTF-8 (byte {exc.start})") from exc
    elif isinstance(value, str):
        text = value
    else:
        # A number, a boolean or an object is not a caption: storing str(value) would make "3.0" or
        # "{'a': 1}" a pair people are asked to judge.
        raise CaptionProblem("not_text", f"caption is {_kind(value)}, not text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates: what undecodable bytes become under surrogateescape, or "\udcxx" in JSON.
        raise CaptionProblem("not_utf8", f"caption is not valid UTF-8 (character {exc.start})") from exc
    text = text.replace("\x00", "").strip()
    if not text:
        return CaptionIn(text="", source=source, status="empty", reason="empty caption")
    if len(text) > limit:
        return CaptionIn(
            text=text[:limit].rstrip(),
            source=source,
            status="too_long",
            reason=f"capped at {limit:,} of {len(text):,} characters",
        )
    return CaptionIn(text=text, source=source)


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def caption_columns_parse(spec, *, default_source: str = "alt") -> list[tuple[str, str]]:
    """``"title:alt,description:human"`` (or a list of such items) -> ``[("title", "alt"), ...]``."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    columns: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, tuple | list):
            name, source = item
        else:
            name, _, source = str(item).strip().partition(":")
        name, source = name.strip(), (source or default_source).strip()
        if not name:
            continue
        if source not in CAPTION_SOURCES:
            raise ImportSourceError(
                f"caption column {name!r}: unknown caption source {source!r} "
                f"(one of: {', '.join(CAPTION_SOURCES)})"
            )
        columns.append((name, source))
    return columns


def captions_from_values(
    values: list[tuple[object, str]], *, max_chars: int | None = None
) -> tuple[list[CaptionIn], list[CaptionProblem]]:
    captions, problems = [], []
    for value, source in values:
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if item is None:
                continue
            try:
                captions.append(caption_prepare(item, source=source, max_chars=max_chars))
            except CaptionProblem as problem:
                problems.append(problem)
    return captions, problems


def record_or_skips(
    record: Record, problems: list[CaptionProblem], file: str, row
) -> Iterator[Record | Skip]:
    """A record keeps its good captions; each bad caption is reported; no caption at all skips it."""
    for problem in problems:
        yield Skip(file, row, problem.code, problem.reason)
    if record.captions:
        yield record
    elif not problems:
        yield Skip(file, row, "missing_caption", "no caption for this image")


def json_object(raw: bytes, name: str) -> dict:
    """A sidecar ``.json`` as a dict; ``CaptionProblem`` (bad_row / not_utf8) when it is not one."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CaptionProblem("not_utf8", f"{name} is not valid UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise CaptionProblem("bad_row", f"{name} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(meta, dict):
        raise CaptionProblem("bad_row", f"{name} is not a JSON object")
    return meta


def json_captions(meta: dict) -> list:
    return [meta[key] for key in JSON_CAPTION_KEYS if key in meta]


# --- identity -------------------------------------------------------------------------------------


def _json_safe(value):
    """Metadata values as JSON can hold them (Parquet gives bytes, NaN and timestamps too)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value  # PostgreSQL refuses NUL
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return None  # binary columns (the image itself, embeddings) are not metadata
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


def uid_check(value) -> str | None:
    """The source's uid, normalised to lower-case hex; ``CaptionProblem("bad_uid")`` when it is not
    32 hexadecimal digits (DataComp's form, which its subset files split into two 64-bit halves)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CaptionProblem("bad_uid", f"uid {value!r} is not text of 32 hexadecimal digits")
    uid = value.strip().lower()
    if not UID_PATTERN.match(uid):
        raise CaptionProblem(
            "bad_uid",
            f"uid {value[:80]!r} is not 32 hexadecimal digits ({len(value)} characters); "
            "DataComp subsets need 128-bit hex uids",
        )
    return uid


_NOT_META = frozenset(IDENTITY_COLUMNS) | {STATUS_COLUMN, ERROR_COLUMN} | set(JSON_CAPTION_KEYS)


def identity_apply(record: Record, values: dict, *, exclude: set[str] = frozenset()) -> None:
    """Set the record's uid, key, url and metadata from a metadata row or sidecar object: ``uid``,
    ``key`` and ``url`` go to their fields; every other column except ``exclude`` (the image and caption
    columns) and img2dataset's status columns goes to ``meta``. Raises ``CaptionProblem`` for a bad uid.
    """
    record.uid = uid_check(values.get("uid"))
    key = values.get("key")
    if key not in (None, ""):
        record.sample_key = str(key).replace("\x00", "")[:255]
    url = values.get("url")
    if isinstance(url, str) and "url" not in exclude:
        record.url = url.replace("\x00", "")
    meta = {}
    for name, value in values.items():
        if value is None or name in _NOT_META or name in exclude:
            continue
        value = _json_safe(value)
        if value is not None:
            meta[name] = value
    record.meta = meta


def download_failure(values: dict) -> str | None:
    """img2dataset's own reason when this row is a download that failed, else None."""
    status = values.get(STATUS_COLUMN)
    if status in (None, "", STATUS_SUCCESS):
        return None
    message = values.get(ERROR_COLUMN) or "no error message"
    return f"img2dataset could not fetch it ({status}: {str(message)[:300]})"
