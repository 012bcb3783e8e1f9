"""Streaming readers for pool imports: a folder with sidecar captions, CSV / JSONL / Parquet tables, and
WebDataset ``.tar`` shards as img2dataset writes them.

Every reader is a generator that yields ``Record`` (an image, as bytes or a path, with its captions) or
``Skip`` (file, row, reason) and holds at most one record (or one Parquet record batch) in memory, so
the size of a source never changes how much memory an import takes. Readers never touch the database
and never decode images: ``pool.services`` validates images and writes rows.
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from braceexpand import braceexpand
from django.conf import settings

from pool.images import IMAGE_EXTENSIONS

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


def _captions_from_values(values: list[tuple[object, str]]) -> tuple[list[CaptionIn], list[CaptionProblem]]:
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


def _record_or_skips(
    record: Record, problems: list[CaptionProblem], file: str, row
) -> Iterator[Record | Skip]:
    """A record keeps its good captions; each bad caption is reported; no caption at all skips it."""
    for problem in problems:
        yield Skip(file, row, problem.code, problem.reason)
    if record.captions:
        yield record
    elif not problems:
        yield Skip(file, row, "missing_caption", "no caption for this image")


# --- sources --------------------------------------------------------------------------------------


@dataclass
class ImportSource:
    format: str
    paths: list[Path]  # the folder, the table file, or the shards
    root: Path  # image paths must resolve below this
    display: str


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def import_roots() -> list[Path]:
    return [Path(root).resolve() for root in settings.LOUPE_IMPORT_ROOTS]


def source_check_allowed(path: Path) -> None:
    """Refuse sources outside LOUPE_IMPORT_ROOTS when it is set."""
    roots = import_roots()
    if roots and not any(_within(path.resolve(), root) for root in roots):
        raise ImportSourceError(
            f"{path} is outside the allowed import roots ({', '.join(str(r) for r in roots)})"
        )


def _format_of_file(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(TAR_SUFFIXES):
        return "webdataset"
    fmt = TABLE_EXTENSIONS.get(path.suffix.lower())
    if not fmt:
        raise ImportSourceError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            "pass --format folder|csv|jsonl|parquet|webdataset"
        )
    return fmt


def source_resolve(source: str, *, format: str | None = None, root: str | None = None) -> ImportSource:
    """Find what ``source`` names (folder, table file, shard directory, glob or brace pattern of shards)."""
    if format and format not in FORMATS:
        raise ImportSourceError(f"unknown format {format!r} (one of: {', '.join(FORMATS)})")
    path = Path(source).expanduser()
    pattern = any(ch in source for ch in "*?[{")
    if pattern and not path.exists():
        if format not in (None, "webdataset"):
            raise ImportSourceError(f"patterns are only for WebDataset shards, not {format}: {source}")
        shards = sorted(
            {
                Path(p).resolve()
                for expanded in braceexpand(source)
                for p in glob.glob(os.path.expanduser(expanded))
            }
        )
        if not shards:
            raise ImportSourceError(f"no shard matches {source}")
        for shard in shards:
            source_check_allowed(shard)
        base = Path(os.path.commonpath([str(s.parent) for s in shards]))
        return ImportSource("webdataset", shards, _root_for(base, root), source)
    source_check_allowed(path)
    if not path.exists():
        raise ImportSourceError(f"{source}: no such file or folder")
    path = path.resolve()
    if path.is_dir():
        shards = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(TAR_SUFFIXES))
        fmt = format or ("webdataset" if shards else "folder")
        if fmt == "webdataset":
            if not shards:
                raise ImportSourceError(f"{path}: no .tar shards in this folder")
            return ImportSource("webdataset", shards, _root_for(path, root), str(path))
        if fmt != "folder":
            raise ImportSourceError(f"{path} is a folder; format {fmt} needs a file")
        return ImportSource("folder", [path], _root_for(path, root), str(path))
    fmt = format or _format_of_file(path)
    if fmt == "folder":
        raise ImportSourceError(f"{path} is a file, not a folder")
    return ImportSource(fmt, [path], _root_for(path.parent, root), str(path))


def _root_for(base: Path, root: str | None) -> Path:
    if root:
        return Path(root).expanduser().resolve()
    # With configured roots, a table may point anywhere inside the root that holds it.
    for allowed in import_roots():
        if _within(base, allowed):
            return allowed
    return base


# --- estimates ------------------------------------------------------------------------------------


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def records_estimate(src: ImportSource) -> int:
    """How many records the source holds, cheaply (headers only); 0 when unknown."""
    if src.format == "folder":
        return sum(
            1
            for _, _, files in os.walk(src.paths[0])
            for name in files
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS
        )
    if src.format == "csv":
        return max(_count_lines(src.paths[0]) - 1, 0)
    if src.format == "jsonl":
        return _count_lines(src.paths[0])
    if src.format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(src.paths[0]).metadata.num_rows
    total = 0
    for shard in src.paths:
        if not shard.name.lower().endswith(".tar"):
            continue  # compressed shards would have to be decompressed to count
        try:
            with tarfile.open(shard, "r:") as tar:
                total += len({_tar_key(m.name)[0] for m in tar if _tar_key(m.name)[1] in _TAR_IMAGE_EXTS})
        except (tarfile.TarError, OSError, EOFError):
            continue
    return total


# --- readers --------------------------------------------------------------------------------------


def records_read(
    src: ImportSource,
    *,
    image_column: str | None = None,
    caption_columns=None,
    caption_source: str = "alt",
) -> Iterator[Record | Skip]:
    # Links may have changed since the last import in this process.
    _directory_resolve.cache_clear()
    if src.format == "folder":
        return read_folder(src.paths[0], root=src.root, caption_source=caption_source)
    if src.format == "webdataset":
        return read_webdataset(src.paths, caption_source=caption_source)
    columns = caption_columns_parse(caption_columns, default_source=caption_source)
    reader = {"csv": read_csv, "jsonl": read_jsonl, "parquet": read_parquet}[src.format]
    return reader(src.paths[0], root=src.root, image_column=image_column, caption_columns=columns)


def _read_sidecars(image: Path, caption_source: str) -> tuple[list[CaptionIn], list[CaptionProblem], bool]:
    captions: list[CaptionIn] = []
    problems: list[CaptionProblem] = []
    found = False
    txt = image.with_suffix(".txt")
    if txt.is_file():
        found = True
        raw = txt.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(CaptionProblem("not_utf8", f"{txt.name} is not valid UTF-8 (byte {exc.start})"))
        else:
            lines = [line for line in text.splitlines() if line.strip()]
            for line in lines or [""]:
                try:
                    captions.append(caption_prepare(line, source=caption_source))
                except CaptionProblem as problem:
                    problems.append(problem)
    sidecar = image.with_suffix(".json")
    if sidecar.is_file():
        found = True
        values, problem = _json_captions(sidecar.read_bytes(), sidecar.name)
        if problem:
            problems.append(problem)
        more, more_problems = _captions_from_values([(v, caption_source) for v in values])
        captions += more
        problems += more_problems
    return captions, problems, found


def _json_captions(raw: bytes, name: str) -> tuple[list, CaptionProblem | None]:
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


def read_folder(folder: Path, *, root: Path, caption_source: str = "alt") -> Iterator[Record | Skip]:
    """Images anywhere below ``folder``; captions from ``<stem>.txt`` (one per non-empty line) and/or
    ``<stem>.json`` (``caption``/``captions``/``text``, strings or lists)."""
    for directory, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(directory)
        names = sorted(n for n in filenames if not n.startswith("."))
        image_stems = {Path(n).stem for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS}
        for name in names:
            path = here / name
            rel = str(path.relative_to(folder))
            suffix = path.suffix.lower()
            if suffix in (".txt", ".json"):
                if path.stem not in image_stems:
                    yield Skip(
                        rel, None, "orphan_caption", f"caption file without an image named {path.stem}.*"
                    )
                continue
            if suffix not in IMAGE_EXTENSIONS:
                kind = (
                    "SVG is not a raster image"
                    if suffix == ".svg"
                    else f"not an image file ({suffix or 'no extension'})"
                )
                yield Skip(rel, None, "not_an_image", kind)
                continue
            resolved = path.resolve()
            if not _within(resolved, root):
                yield Skip(rel, None, "outside_root", f"links outside the import root ({resolved})")
                continue
            captions, problems, found = _read_sidecars(path, caption_source)
            if not found:
                yield Skip(
                    rel, None, "missing_caption", f"no caption file ({path.stem}.txt or {path.stem}.json)"
                )
                continue
            record = Record(source=str(folder), key=rel, file=rel, row=None, captions=captions, path=resolved)
            yield from _record_or_skips(record, problems, rel, None)


def _columns_pick(
    available: list[str], image_column: str | None, caption_columns: list[tuple[str, str]], file: str
) -> tuple[str, list[tuple[str, str]]]:
    shown = ", ".join(available) or "(none)"
    if image_column:
        if image_column not in available:
            raise ImportSourceError(f"{file}: no image column {image_column!r}; columns are: {shown}")
    else:
        image_column = next((c for c in IMAGE_COLUMN_CANDIDATES if c in available), None)
        if not image_column:
            raise ImportSourceError(
                f"{file}: no image column found (tried {', '.join(IMAGE_COLUMN_CANDIDATES)}); "
                f"columns are: {shown}; pass --image-column"
            )
    if caption_columns:
        missing = [name for name, _ in caption_columns if name not in available]
        if missing:
            raise ImportSourceError(
                f"{file}: no caption column {', '.join(repr(m) for m in missing)}; columns are: {shown}"
            )
    else:
        found = next((c for c in CAPTION_COLUMN_CANDIDATES if c in available and c != image_column), None)
        if not found:
            raise ImportSourceError(
                f"{file}: no caption column found (tried {', '.join(CAPTION_COLUMN_CANDIDATES)}); "
                f"columns are: {shown}; pass --caption-columns"
            )
        caption_columns = [(found, "alt")]
    return image_column, caption_columns


@functools.lru_cache(maxsize=4096)
def _directory_resolve(directory: str) -> str:
    return os.path.realpath(directory)


def path_resolve(path: str) -> tuple[str, os.stat_result | None]:
    """The real path of ``path`` (absolute) and its stat (None when missing).

    Tables list thousands of files per folder and a full resolve costs one lstat per path component,
    so folders' resolutions are cached; a file that is itself a link is resolved fully.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return os.path.realpath(path), None
    if stat.S_ISLNK(st.st_mode) or "/." in path:
        real = os.path.realpath(path)
        try:
            return real, os.stat(real)
        except OSError:
            return real, None
    return os.path.join(_directory_resolve(os.path.dirname(path)), os.path.basename(path)), st


def path_within(real: str, root: Path) -> bool:
    root_str = str(root)
    return real == root_str or real.startswith(root_str.rstrip("/") + "/")


def _row_record(
    row: dict,
    *,
    table: Path,
    root: Path,
    line: int,
    image_column: str,
    caption_columns: list[tuple[str, str]],
) -> Iterator[Record | Skip]:
    file = table.name
    locator = f"{file}:{line}"
    table_dir = str(table.parent)
    value = row.get(image_column)
    data: bytes | None = None
    path: str | None = None
    if isinstance(value, dict):  # Hugging Face style {"bytes": ..., "path": ...}
        data, value = value.get("bytes"), value.get("path")
    if isinstance(value, bytes | bytearray) and data is None:
        data, value = bytes(value), None
    if data is not None:
        key = str(value) if value else locator
    else:
        if value is None or (isinstance(value, str) and not value.strip()):
            yield Skip(file, line, "missing_image", f"no value in image column {image_column!r}")
            return
        key = str(value).strip()
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            yield Skip(file, line, "not_utf8", "image path is not valid UTF-8")
            return
        if "\x00" in key:
            # No file system accepts a NUL in a path; os calls would raise instead of answering.
            yield Skip(file, line, "bad_path", "image path contains a NUL character")
            return
        if re.match(r"^[a-z][a-z0-9+.-]*://", key, re.I):
            yield Skip(
                file, line, "remote_url", f"{key[:200]} is a URL; download it first (e.g. with img2dataset)"
            )
            return
        candidate = os.path.expanduser(key) if key.startswith("~") else key
        if not os.path.isabs(candidate):
            candidate = os.path.join(table_dir, candidate)
        # Resolving, the root check and reading happen in the loader's threads: on network storage the
        # file system calls are the slow part, and there they overlap. A plain string, because pathlib
        # interns every path part, and a pool has millions of distinct file names.
        path = candidate
    captions, problems = _captions_from_values([(row.get(name), source) for name, source in caption_columns])
    record = Record(
        source=str(table),
        key=key,
        file=file,
        row=line,
        captions=captions,
        data=data,
        path=path,
        root=root if path is not None else None,
    )
    yield from _record_or_skips(record, problems, file, line)


def read_csv(
    table: Path, *, root: Path, image_column: str | None = None, caption_columns: list[tuple[str, str]] = ()
) -> Iterator[Record | Skip]:
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    # surrogateescape keeps undecodable bytes visible per cell, so one bad caption skips one row.
    with open(table, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise ImportSourceError(f"{table.name}: empty file, no header row") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        image_col, columns = _columns_pick(header, image_column, list(caption_columns), table.name)
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield Skip(table.name, reader.line_num, "bad_row", f"unreadable CSV row ({exc})")
                continue
            if not cells or not any(c.strip() for c in cells):
                continue
            row = dict(zip(header, cells, strict=False))
            yield from _row_record(
                row,
                table=table,
                root=root,
                line=reader.line_num,
                image_column=image_col,
                caption_columns=columns,
            )


def read_jsonl(
    table: Path, *, root: Path, image_column: str | None = None, caption_columns: list[tuple[str, str]] = ()
) -> Iterator[Record | Skip]:
    picked: tuple[str, list[tuple[str, str]]] | None = None
    with open(table, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield Skip(table.name, line_no, "not_utf8", f"line is not valid UTF-8 (byte {exc.start})")
                continue
            except json.JSONDecodeError as exc:
                yield Skip(table.name, line_no, "bad_row", f"invalid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                yield Skip(table.name, line_no, "bad_row", "line is not a JSON object")
                continue
            if picked is None:
                # The first object names the columns; later rows missing one are skipped, not fatal.
                picked = _columns_pick(list(row), image_column, list(caption_columns), table.name)
            image_col, columns = picked
            if image_col not in row:
                yield Skip(table.name, line_no, "missing_image", f"row has no {image_col!r}")
                continue
            yield from _row_record(
                row, table=table, root=root, line=line_no, image_column=image_col, caption_columns=columns
            )


def read_parquet(
    table: Path, *, root: Path, image_column: str | None = None, caption_columns: list[tuple[str, str]] = ()
) -> Iterator[Record | Skip]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(table)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise ImportSourceError(f"{table.name}: not a readable Parquet file ({exc})") from exc
    names = list(parquet.schema_arrow.names)
    image_col, columns = _columns_pick(names, image_column, list(caption_columns), table.name)
    wanted = list(dict.fromkeys([image_col, *(name for name, _ in columns)]))
    row_no = 0
    # Record batches keep memory flat; a whole-file read would hold the table.
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
        for row in batch.to_pylist():
            row_no += 1
            yield from _row_record(
                row, table=table, root=root, line=row_no, image_column=image_col, caption_columns=columns
            )


# --- WebDataset -----------------------------------------------------------------------------------

_TAR_IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"}


def _tar_key(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is everything before the first dot of the basename."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _group_record(
    shard: Path, key: str, members: dict[str, bytes], caption_source: str
) -> Iterator[Record | Skip]:
    file = shard.name
    image_ext = next((ext for ext in members if ext in _TAR_IMAGE_EXTS), None)
    if image_ext is None:
        if "svg" in members:
            yield Skip(file, key, "not_an_image", "SVG is not a raster image")
        else:
            yield Skip(
                file,
                key,
                "missing_image",
                f"no image member for key {key} (has: {', '.join(sorted(members))})",
            )
        return
    values: list = []
    problems: list[CaptionProblem] = []
    if "txt" in members:
        values.append(members["txt"])
    elif "json" in members:
        found, problem = _json_captions(members["json"], f"{key}.json")
        values += found
        if problem:
            problems.append(problem)
    if not values and not problems:
        yield Skip(file, key, "missing_caption", f"{key}.{image_ext} has no caption ({key}.txt missing)")
        return
    captions, more = _captions_from_values([(v, caption_source) for v in values])
    record = Record(
        source=str(shard), key=key, file=file, row=key, captions=captions, data=members[image_ext]
    )
    yield from _record_or_skips(record, problems + more, file, key)


def read_webdataset(shards: list[Path], *, caption_source: str = "alt") -> Iterator[Record | Skip]:
    """Members of one sample are adjacent in a shard (``key.jpg``, ``key.txt``, ``key.json``); the tar
    is read as a stream so a shard is never held in memory, only the current sample."""
    for shard in shards:
        current: str | None = None
        members: dict[str, bytes] = {}
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = _tar_key(member.name)
                    if key != current:
                        if current is not None:
                            yield from _group_record(shard, current, members, caption_source)
                        current, members = key, {}
                    handle = tar.extractfile(member)
                    members[ext] = handle.read() if handle else b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            # What was read before the damage still imports; the rest of this shard is reported.
            members = {}
            yield Skip(
                shard.name, current, "corrupt_shard", f"tar is truncated or corrupt after {current!r} ({exc})"
            )
            current = None
        if current is not None and members:
            yield from _group_record(shard, current, members, caption_source)
