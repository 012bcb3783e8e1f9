"""Tables: Parquet (img2dataset's parquet output with the image bytes in a ``jpg`` column, or any table
of image paths or embedded bytes), CSV/TSV and JSON Lines (image paths).

A row's image stays where it is: a path is recorded as the image's file, embedded bytes as the Parquet
cell they are in (row group and row). Besides the image and caption columns, ``uid``, ``key`` and
``url`` are the sample's identity and every other column is kept as its metadata; img2dataset's
``status``/``error_message`` rows that are not ``success`` are reported with img2dataset's reason.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from pool import storage
from pool.readers.base import (
    CAPTION_COLUMN_CANDIDATES,
    IMAGE_BYTES_COLUMN_CANDIDATES,
    IMAGE_COLUMN_CANDIDATES,
    PARQUET_BATCH_ROWS,
    STATUS_COLUMN,
    CaptionProblem,
    ImportSourceError,
    ReadOptions,
    Record,
    ShardUnreadable,
    Skip,
    Unit,
    captions_from_values,
    download_failure,
    identity_apply,
    record_or_skips,
)
from pool.readers.sources import ImportSource, file_fingerprint

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
# A quoted CSV field that runs over this many physical lines, or swallows lines that look like rows,
# is an unclosed quote, not a multi-line caption.
CSV_MAX_FIELD_LINES = 50


def units(src: ImportSource) -> list[Unit]:
    return src.units


def fingerprint(unit: Unit) -> dict:
    return {"shard": file_fingerprint(unit.uri)}


def _count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def estimate(unit: Unit) -> int:
    try:
        if unit.format == "csv":
            return max(_count_lines(unit.uri) - 1, 0)
        if unit.format == "jsonl":
            return _count_lines(unit.uri)
        import pyarrow.parquet as pq

        with storage.open_uri(unit.uri, block_size=1 << 20) as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    except Exception:  # noqa: BLE001 - an estimate only; reading reports the problem properly
        return 0


def read(unit: Unit, src: ImportSource, options: ReadOptions) -> Iterator[Record | Skip]:
    reader = {"csv": read_csv, "jsonl": read_jsonl, "parquet": read_parquet}[unit.format]
    return reader(
        unit.uri, root=src.root, image_column=options.image_column, caption_columns=options.caption_columns
    )


def _columns_pick(
    available: list[str],
    image_column: str | None,
    caption_columns: list[tuple[str, str]],
    file: str,
    binary: set[str] = frozenset(),
) -> tuple[str, list[tuple[str, str]]]:
    """The image column (a binary one holding the image first, then a path column) and the caption
    columns. A ``url`` column is never taken for the image: URLs are not fetched."""
    shown = ", ".join(available) or "(none)"
    if image_column:
        if image_column not in available:
            raise ImportSourceError(f"{file}: no image column {image_column!r}; columns are: {shown}")
    else:
        image_column = next((c for c in IMAGE_BYTES_COLUMN_CANDIDATES if c in binary), None) or next(
            (c for c in IMAGE_COLUMN_CANDIDATES if c in available), None
        )
        if not image_column:
            hint = (
                " (a url column is not fetched: download the images first, e.g. with img2dataset)"
                if "url" in available
                else ""
            )
            raise ImportSourceError(
                f"{file}: no image column found (tried {', '.join(IMAGE_BYTES_COLUMN_CANDIDATES)} holding "
                f"bytes, then {', '.join(IMAGE_COLUMN_CANDIDATES)}){hint}; columns are: {shown}; "
                "pass --image-column"
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
    table: str,
    root: Path | None,
    line: int,
    image_column: str,
    caption_columns: list[tuple[str, str]],
    cell: tuple[int, int] | None = None,
) -> Iterator[Record | Skip]:
    """One table row as a record: its image (a path, or the bytes in the Parquet ``cell``), captions,
    and the source's identity and metadata from the other columns."""
    file = storage.uri_name(table)
    locator = f"{file}:{line}"
    failure = download_failure(row) if STATUS_COLUMN in row else None
    if failure:
        yield Skip(file, line, "download_failed", failure)
        return
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
        if not isinstance(value, str):
            yield Skip(
                file,
                line,
                "bad_path",
                f"image column {image_column!r} holds {type(value).__name__}, not a path",
            )
            return
        key = value.strip()
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            yield Skip(file, line, "not_utf8", "image path is not valid UTF-8")
            return
        if "\x00" in key:
            # No file system accepts a NUL in a path; os calls would raise instead of answering.
            yield Skip(file, line, "bad_path", "image path contains a NUL character")
            return
        if _URL.match(key):
            yield Skip(
                file, line, "remote_url", f"{key[:200]} is a URL; download it first (e.g. with img2dataset)"
            )
            return
        if storage.is_local(table):
            candidate = os.path.expanduser(key) if key.startswith("~") else key
            if not os.path.isabs(candidate):
                candidate = os.path.join(os.path.dirname(table), candidate)
            # Resolving, the root check and reading happen in the loader's threads: on network storage
            # the file system calls are the slow part, and there they overlap. A plain string, because
            # pathlib interns every path part, and a pool has millions of distinct file names.
            path = candidate
        else:
            if key.startswith("/") or ".." in key.split("/"):
                yield Skip(file, line, "outside_root", f"{key[:200]} leaves the table's folder")
                return
            path = storage.uri_join(storage.uri_parent(table), key)
    record = Record(
        unit=table,
        key=key,
        file=file,
        row=line,
        data=data,
        path=path,
        root=root if (path is not None and storage.is_local(table)) else None,
        row_group=cell[0] if (cell and data is not None) else None,
        row_in_group=cell[1] if (cell and data is not None) else None,
        column=image_column if (cell and data is not None) else None,
    )
    try:
        identity_apply(record, row, exclude={image_column, *(name for name, _ in caption_columns)})
    except CaptionProblem as problem:
        yield Skip(file, line, problem.code, problem.reason)
        return
    captions, problems = captions_from_values([(row.get(name), source) for name, source in caption_columns])
    record.captions = captions
    yield from record_or_skips(record, problems, file, line)


def read_csv(
    table: str,
    *,
    root: Path | None,
    image_column: str | None = None,
    caption_columns: list[tuple[str, str]] = (),
) -> Iterator[Record | Skip]:
    name = storage.uri_name(table)
    delimiter = "\t" if table.lower().endswith(".tsv") else ","
    # surrogateescape keeps undecodable bytes visible per cell, so one bad caption skips one row.
    with open(table, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise ImportSourceError(f"{name}: empty file, no header row") from None
        except csv.Error as exc:
            raise ImportSourceError(f"{name}: unreadable header row ({exc})") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        image_col, columns = _columns_pick(header, image_column, list(caption_columns), name)
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield Skip(name, reader.line_num, "bad_row", f"unreadable CSV row ({exc})")
                continue
            if not cells or not any(c.strip() for c in cells):
                continue
            end = reader.line_num
            if end > start and _unclosed_quote(cells, delimiter, end - start + 1):
                # csv reads an unclosed quote up to the next quote character, or to the end of the
                # file: every row in between silently becomes part of one caption.
                yield Skip(
                    name,
                    start,
                    "unclosed_quote",
                    f"the quote opened on line {start} is not closed until line {end}: lines {start}-{end} "
                    "were read as one row and are not imported; close the quote and import again",
                )
                continue
            row = dict(zip(header, cells, strict=False))
            yield from _row_record(
                row,
                table=table,
                root=root,
                line=start,
                image_column=image_col,
                caption_columns=columns,
            )


def _unclosed_quote(cells: list[str], delimiter: str, lines: int) -> bool:
    """A row spanning several lines is an unclosed quote when it is absurdly long or a cell holds later
    lines that look like rows of their own (they contain the delimiter)."""
    if lines > CSV_MAX_FIELD_LINES:
        return True
    return any("\n" in cell and any(delimiter in part for part in cell.split("\n")[1:]) for cell in cells)


def read_jsonl(
    table: str,
    *,
    root: Path | None,
    image_column: str | None = None,
    caption_columns: list[tuple[str, str]] = (),
) -> Iterator[Record | Skip]:
    name = storage.uri_name(table)
    picked: tuple[str, list[tuple[str, str]]] | None = None
    with open(table, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield Skip(name, line_no, "not_utf8", f"line is not valid UTF-8 (byte {exc.start})")
                continue
            except json.JSONDecodeError as exc:
                yield Skip(name, line_no, "bad_row", f"invalid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                yield Skip(name, line_no, "bad_row", "line is not a JSON object")
                continue
            if picked is None:
                # The first object names the columns; later rows missing one are skipped, not fatal.
                picked = _columns_pick(list(row), image_column, list(caption_columns), name)
            image_col, columns = picked
            if image_col not in row:
                yield Skip(name, line_no, "missing_image", f"row has no {image_col!r}")
                continue
            yield from _row_record(
                row, table=table, root=root, line=line_no, image_column=image_col, caption_columns=columns
            )


def parquet_open(uri: str):
    """A ``pyarrow.parquet.ParquetFile`` over local or object storage, or ``ShardUnreadable`` saying
    in words that the file is not Parquet (pyarrow's ArrowInvalid would say "Parquet magic bytes not
    found in footer")."""
    import pyarrow.parquet as pq

    name = storage.uri_name(uri)
    try:
        handle = storage.open_uri(uri, block_size=1 << 22)
    except storage.StorageError as exc:
        raise ShardUnreadable(str(exc)) from exc
    try:
        return pq.ParquetFile(handle)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        handle.close()
        raise ShardUnreadable(
            f"{name} is not a readable Parquet file (is it truncated, or another format with a .parquet "
            f"name? pyarrow says: {str(exc)[:200]})"
        ) from exc


def read_parquet(
    table: str,
    *,
    root: Path | None,
    image_column: str | None = None,
    caption_columns: list[tuple[str, str]] = (),
) -> Iterator[Record | Skip]:
    import pyarrow as pa

    name = storage.uri_name(table)
    parquet = parquet_open(table)
    try:
        schema = parquet.schema_arrow
        binary = {f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)}
        binary |= {f.name for f in schema if pa.types.is_struct(f.type) and "bytes" in f.type.names}
        image_col, columns = _columns_pick(
            list(schema.names), image_column, list(caption_columns), name, binary
        )
        # Every column but other binary ones (embeddings, a second image): they become the metadata.
        wanted = [n for n in schema.names if n not in binary or n == image_col]
        line = 0
        # One row group at a time, in record batches: memory stays flat, and each row's position in
        # its row group is where the pool reads its image from later.
        for group in range(parquet.num_row_groups):
            in_group = 0
            try:
                batches = parquet.iter_batches(
                    batch_size=PARQUET_BATCH_ROWS, columns=wanted, row_groups=[group]
                )
                for batch in batches:
                    for row in batch.to_pylist():
                        line += 1
                        yield from _row_record(
                            row,
                            table=table,
                            root=root,
                            line=line,
                            image_column=image_col,
                            caption_columns=columns,
                            cell=(group, in_group),
                        )
                        in_group += 1
            except (OSError, ValueError) as exc:
                yield Skip(
                    name, line + 1, "corrupt_shard", f"row group {group} is unreadable ({str(exc)[:200]})"
                )
    finally:
        parquet.close()
