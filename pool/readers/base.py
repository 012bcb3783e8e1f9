"""What every reader shares: the records and skips it yields, the caption helpers, and the ``Reader``
protocol each format module (``folder``, ``table``, ``webdataset``) implements.

A reader is a generator that yields ``Record`` (an image, as bytes or a path, with its captions) or
``Skip`` (file, row, reason) and holds at most one record (or one Parquet record batch) in memory, so
the size of a source never changes how much memory an import takes. Readers never touch the database
and never decode images: ``pool.importing`` validates images and writes rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from django.conf import settings

if TYPE_CHECKING:
    from pool.readers.sources import ImportSource

FORMATS = ("folder", "csv", "jsonl", "parquet", "webdataset")
CAPTION_SOURCES = ("alt", "synthetic", "model", "rewrite", "human")

# Autodetection order: the first name present in the table wins.
IMAGE_COLUMN_CANDIDATES = ("image", "image_path", "path", "filepath", "file_path", "file", "filename", "url")
CAPTION_COLUMN_CANDIDATES = ("caption", "captions", "text", "alt", "alt_text", "title", "description")
JSON_CAPTION_KEYS = ("caption", "captions", "text")
TABLE_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_BATCH_ROWS = 2048

# Python's default (128 KiB) would make one huge caption abort the whole CSV instead of being capped.
csv.field_size_limit(1 << 28)


class ImportSourceError(Exception):
    """A problem with the whole source (missing file, missing column): the import cannot start."""


@dataclass
class CaptionIn:
    text: str
    source: str
    status: str = "ok"
    reason: str = ""


@dataclass
class Record:
    source: str  # the file or shard the record comes from
    key: str  # the image's key inside that source
    file: str  # for messages: the file (name) ...
    row: int | str | None  # ... and the row, line or key within it
    captions: list[CaptionIn] = field(default_factory=list)
    data: bytes | None = None
    path: Path | str | None = None
    # Set for paths taken from a table: the loader resolves them and refuses any outside this root.
    root: Path | None = None

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

    def estimate(self, src: ImportSource) -> int:
        """How many records the source holds, cheaply (headers only); 0 when unknown."""

    def read(self, src: ImportSource, options: ReadOptions) -> Iterator[Record | Skip]:
        """Records and skips, in source order."""


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
        text = str(value)
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


def captions_from_values(values: list[tuple[object, str]]) -> tuple[list[CaptionIn], list[CaptionProblem]]:
    captions, problems = [], []
    for value, source in values:
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if item is None:
                continue
            try:
                captions.append(caption_prepare(item, source=source))
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


def json_captions(raw: bytes, name: str) -> tuple[list, CaptionProblem | None]:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return [], CaptionProblem("not_utf8", f"{name} is not valid UTF-8 (byte {exc.start})")
    except json.JSONDecodeError as exc:
        return [], CaptionProblem("bad_row", f"{name} is not valid JSON ({exc.msg} at line {exc.lineno})")
    if not isinstance(meta, dict):
        return [], CaptionProblem("bad_row", f"{name} is not a JSON object")
    values = [meta[key] for key in JSON_CAPTION_KEYS if key in meta]
    return values, None
