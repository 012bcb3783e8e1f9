"""A folder of images with caption sidecars (``<stem>.txt``, ``<stem>.json``), and img2dataset's
``files`` output: ``00000/`` folders of ``000000000.jpg`` + ``.txt`` + ``.json`` beside ``00000.parquet``
(the metadata of every URL tried, failed ones included).

A ``.txt`` sidecar is one caption, line breaks and all (as img2dataset writes it and WebDataset reads
it); more than one caption per image goes in the ``.json`` (``captions``: a list). The ``.json`` also
gives the sample's identity (``uid``, ``key``, ``url``) and metadata. Images stay where they are: the
record carries the image's path; every file read (images and sidecars) is resolved, links included,
and refused outside the import root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from pool import storage
from pool.images import IMAGE_EXTENSIONS
from pool.readers.base import (
    MAX_SIDECAR_BYTES,
    CaptionProblem,
    ReadOptions,
    Record,
    ShardUnreadable,
    Skip,
    Unit,
    captions_from_values,
    download_failure,
    identity_apply,
    json_captions,
    json_object,
    record_or_skips,
)
from pool.readers.sources import ImportSource, file_fingerprint, file_read_within, unit_fingerprint, within

CAPTION_COLUMN = "caption"


def units(src: ImportSource) -> list[Unit]:
    return src.units


def fingerprint(unit: Unit) -> dict:
    if unit.format == "files":
        return unit_fingerprint_files(unit)
    # A folder of loose files has no single stamp: its files' count, total size and newest mtime.
    count = size = 0
    newest = 0.0
    for directory, dirnames, filenames in os.walk(unit.uri):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            try:
                st = os.stat(os.path.join(directory, name))
            except OSError:
                continue
            count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime)
    return {"shard": {"files": count, "size": size, "mtime": newest}}


def unit_fingerprint_files(unit: Unit) -> dict:
    """img2dataset writes a files shard's folder and its Parquet together: the Parquet's stamp and
    footer describe the folder (a listing of every file would cost a request per file on S3)."""
    if unit.metadata_uri:
        return {"metadata": file_fingerprint(unit.metadata_uri)}
    return unit_fingerprint(unit)


def estimate(unit: Unit) -> int:
    if unit.format == "files" and unit.metadata_uri:
        from pool.readers.webdataset import estimate as metadata_estimate

        return metadata_estimate(unit)
    if not storage.is_local(unit.uri):
        return 0
    return sum(
        1
        for _, _, files in os.walk(unit.uri)
        for name in files
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS
    )


def read(unit: Unit, src: ImportSource, options: ReadOptions) -> Iterator[Record | Skip]:
    if unit.format == "files":
        return read_files_shard(unit, root=src.root, caption_source=options.caption_source)
    return read_folder(Path(unit.uri), root=src.root or Path(unit.uri), caption_source=options.caption_source)


# --- sidecars -------------------------------------------------------------------------------------


def _sidecar_values(
    record: Record, txt: str | None, sidecar: str | None, root: Path | None, *, caption: bool = True
) -> tuple[list, list[CaptionProblem]]:
    """Caption values from ``txt`` (the whole file is one caption) and, unless the txt gave one, from
    the ``.json``; the ``.json``'s identity and metadata go on the record."""
    values: list = []
    problems: list[CaptionProblem] = []
    if txt is not None and caption:
        name = storage.uri_name(txt)
        try:
            raw = file_read_within(txt, root, max_bytes=MAX_SIDECAR_BYTES, what=name)
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                problems.append(CaptionProblem("not_utf8", f"{name} is not valid UTF-8 (byte {exc.start})"))
        except CaptionProblem as problem:
            problems.append(problem)
    if sidecar is not None:
        name = storage.uri_name(sidecar)
        try:
            meta = json_object(file_read_within(sidecar, root, max_bytes=MAX_SIDECAR_BYTES, what=name), name)
            identity_apply(record, meta)
            if caption and txt is None:
                values += json_captions(meta)
        except CaptionProblem as problem:
            problems.append(problem)
    return values, problems


def read_folder(folder: Path, *, root: Path, caption_source: str = "alt") -> Iterator[Record | Skip]:
    """Images anywhere below ``folder``; captions from ``<stem>.txt`` (one caption) and/or ``<stem>.json``
    (``caption``/``captions``/``text``, strings or lists; ``uid``, ``key``, ``url`` and metadata)."""
    for directory, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(directory)
        names = sorted(n for n in filenames if not n.startswith("."))
        present = set(names)
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
            if not within(resolved, root):
                yield Skip(rel, None, "outside_root", f"links outside the import root ({resolved})")
                continue
            txt = str(here / f"{path.stem}.txt") if f"{path.stem}.txt" in present else None
            sidecar = str(here / f"{path.stem}.json") if f"{path.stem}.json" in present else None
            if txt is None and sidecar is None:
                yield Skip(
                    rel, None, "missing_caption", f"no caption file ({path.stem}.txt or {path.stem}.json)"
                )
                continue
            record = Record(unit=str(folder), key=rel, file=rel, row=None, path=str(resolved), root=root)
            values, problems = _sidecar_values(record, txt, sidecar, root)
            if any(p.code == "bad_uid" for p in problems):
                yield from (Skip(rel, None, p.code, p.reason) for p in problems)
                continue
            record.captions, more = captions_from_values([(v, caption_source) for v in values])
            yield from record_or_skips(record, problems + more, rel, None)


# --- img2dataset files output ---------------------------------------------------------------------


def read_files_shard(
    unit: Unit, *, root: Path | None, caption_source: str = "alt"
) -> Iterator[Record | Skip]:
    """One ``00000/`` folder: the rows of ``00000.parquet`` in order (failed downloads reported with
    img2dataset's reason), each with its image file; then files the metadata does not list."""
    from pool.readers.webdataset import _metadata_read

    file = unit.name
    try:
        entries = storage.listdir(unit.uri)
    except storage.StorageError as exc:
        raise ShardUnreadable(str(exc)) from exc
    by_stem: dict[str, dict[str, str]] = {}
    for uri, is_dir in entries:
        if is_dir:
            continue
        stem, _, ext = storage.uri_name(uri).partition(".")
        by_stem.setdefault(stem, {})[ext.lower()] = uri
    rows: dict[str, dict] | None = None
    caption_in_rows = False
    if unit.metadata_uri:
        rows, columns, problem = _metadata_read(unit.metadata_uri)
        if problem:
            yield Skip(file, None, "bad_metadata", f"{problem}; using the .json and .txt files instead")
        caption_in_rows = rows is not None and CAPTION_COLUMN in columns
    keys = list(rows) if rows is not None else sorted(by_stem)
    for key in keys:
        row = rows.get(key) if rows is not None else None
        if row is not None:
            failure = download_failure(row)
            if failure:
                yield Skip(file, key, "download_failed", failure)
                continue
        files = by_stem.pop(key, {})
        image_ext = next(
            (e for e in files if e.rsplit(".", 1)[-1] in {x.lstrip(".") for x in IMAGE_EXTENSIONS}), None
        )
        if image_ext is None:
            if row is not None:
                yield Skip(
                    file,
                    key,
                    "missing_in_folder",
                    f"{storage.uri_name(unit.metadata_uri)} says {key} was downloaded but {file}/ has no image for it",
                )
            elif files:
                yield Skip(
                    file, key, "missing_image", f"no image file for {key} (has: {', '.join(sorted(files))})"
                )
            continue
        image_uri = files[image_ext]
        path = image_uri
        if storage.is_local(image_uri):
            real = os.path.realpath(image_uri)
            if root is not None and not within(Path(real), root):
                yield Skip(
                    file, key, "outside_root", f"{key}.{image_ext} links outside the import root ({real})"
                )
                continue
            path = real
        record = Record(unit=unit.uri, key=key, file=file, row=key, path=path, root=root, sample_key=key)
        values: list = []
        problems: list[CaptionProblem] = []
        if row is not None:
            try:
                identity_apply(record, row, exclude={CAPTION_COLUMN})
            except CaptionProblem as problem:
                yield Skip(file, key, problem.code, problem.reason)
                continue
            if caption_in_rows:
                values.append(row.get(CAPTION_COLUMN))
            else:
                values, problems = _sidecar_values(record, files.get("txt"), None, root)
        else:
            values, problems = _sidecar_values(record, files.get("txt"), files.get("json"), root)
            if any(p.code == "bad_uid" for p in problems):
                yield from (Skip(file, key, p.code, p.reason) for p in problems)
                continue
        if not values and not problems:
            yield Skip(file, key, "missing_caption", f"{key} has no caption ({key}.txt missing)")
            continue
        record.captions, more = captions_from_values([(v, caption_source) for v in values])
        yield from record_or_skips(record, problems + more, file, key)
    if rows is not None:
        for key, files in by_stem.items():
            if any(e.rsplit(".", 1)[-1] in {x.lstrip(".") for x in IMAGE_EXTENSIONS} for e in files):
                yield Skip(
                    file,
                    key,
                    "not_in_metadata",
                    f"{file}/ holds {key} but {storage.uri_name(unit.metadata_uri)} has no row for it",
                )
