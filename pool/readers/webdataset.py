"""WebDataset ``.tar`` shards as img2dataset writes them: ``key.jpg``, ``key.txt``, ``key.json``."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

from pool.readers.base import (
    CaptionProblem,
    ReadOptions,
    Record,
    Skip,
    captions_from_values,
    json_captions,
    record_or_skips,
)
from pool.readers.sources import ImportSource


def estimate(src: ImportSource) -> int:
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


def read(src: ImportSource, options: ReadOptions) -> Iterator[Record | Skip]:
    return read_webdataset(src.paths, caption_source=options.caption_source)


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
        found, problem = json_captions(members["json"], f"{key}.json")
        values += found
        if problem:
            problems.append(problem)
    if not values and not problems:
        yield Skip(file, key, "missing_caption", f"{key}.{image_ext} has no caption ({key}.txt missing)")
        return
    captions, more = captions_from_values([(v, caption_source) for v in values])
    record = Record(
        source=str(shard), key=key, file=file, row=key, captions=captions, data=members[image_ext]
    )
    yield from record_or_skips(record, problems + more, file, key)


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
