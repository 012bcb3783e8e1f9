"""Where an import reads from: resolving what a source names (folder, table, shards, pattern), the
allowed import roots, and the paths tables point at."""

from __future__ import annotations

import functools
import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand
from django.conf import settings

from pool.readers.base import FORMATS, TABLE_EXTENSIONS, TAR_SUFFIXES, ImportSourceError


@dataclass
class ImportSource:
    format: str
    paths: list[Path]  # the folder, the table file, or the shards
    root: Path  # image paths must resolve below this
    display: str


def within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def import_roots() -> list[Path]:
    return [Path(root).resolve() for root in settings.LOUPE_IMPORT_ROOTS]


def source_check_allowed(path: Path) -> None:
    """Refuse sources outside LOUPE_IMPORT_ROOTS when it is set."""
    roots = import_roots()
    if roots and not any(within(path.resolve(), root) for root in roots):
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
        if within(base, allowed):
            return allowed
    return base


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


def path_cache_clear() -> None:
    """Forget folders' resolutions: links may have changed since the last import in this process."""
    _directory_resolve.cache_clear()


def path_within(real: str, root: Path) -> bool:
    root_str = str(root)
    return real == root_str or real.startswith(root_str.rstrip("/") + "/")
