"""A folder of images with caption sidecars (``<stem>.txt``, ``<stem>.json``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from pool.images import IMAGE_EXTENSIONS
from pool.readers.base import (
    CaptionIn,
    CaptionProblem,
    ReadOptions,
    Record,
    Skip,
    caption_prepare,
    captions_from_values,
    json_captions,
    record_or_skips,
)
from pool.readers.sources import ImportSource, within


def estimate(src: ImportSource) -> int:
    return sum(
        1
        for _, _, files in os.walk(src.paths[0])
        for name in files
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS
    )


def read(src: ImportSource, options: ReadOptions) -> Iterator[Record | Skip]:
    return read_folder(src.paths[0], root=src.root, caption_source=options.caption_source)


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
        values, problem = json_captions(sidecar.read_bytes(), sidecar.name)
        if problem:
            problems.append(problem)
        more, more_problems = captions_from_values([(v, caption_source) for v in values])
        captions += more
        problems += more_problems
    return captions, problems, found


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
            if not within(resolved, root):
                yield Skip(rel, None, "outside_root", f"links outside the import root ({resolved})")
                continue
            captions, problems, found = _read_sidecars(path, caption_source)
            if not found:
                yield Skip(
                    rel, None, "missing_caption", f"no caption file ({path.stem}.txt or {path.stem}.json)"
                )
                continue
            record = Record(source=str(folder), key=rel, file=rel, row=None, captions=captions, path=resolved)
            yield from record_or_skips(record, problems, rel, None)
