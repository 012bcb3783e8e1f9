"""Tables: CSV/TSV, JSON Lines and Parquet, one row per image path (or embedded image bytes)."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from pool.readers.base import (
    CAPTION_COLUMN_CANDIDATES,
    IMAGE_COLUMN_CANDIDATES,
    PARQUET_BATCH_ROWS,
    ImportSourceError,
    ReadOptions,
    Record,
    Skip,
    captions_from_values,
    record_or_skips,
)
from pool.readers.sources import ImportSource


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def estimate(src: ImportSource) -> int:
    if src.format == "csv":
        return max(_count_lines(src.paths[0]) - 1, 0)
    if src.format == "jsonl":
        return _count_lines(src.paths[0])
    import pyarrow.parquet as pq

    return pq.ParquetFile(src.paths[0]).metadata.num_rows


def read(src: ImportSource, options: ReadOptions) -> Iterator[Record | Skip]:
    reader = {"csv": read_csv, "jsonl": read_jsonl, "parquet": read_parquet}[src.format]
    return reader(
        src.paths[0],
        root=src.root,
        image_column=options.image_column,
        caption_columns=options.caption_columns,
    )


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
    captions, problems = captions_from_values([(row.get(name), source) for name, source in caption_columns])
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
    yield from record_or_skips(record, problems, file, line)


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
