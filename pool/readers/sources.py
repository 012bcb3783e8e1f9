"""Where an import reads from: resolving what a source names into its shards (``Unit``), the
allowed import roots, and resolving the local paths tables and sidecars point at."""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand
from django.conf import settings

from pool import storage
from pool.readers.base import (
    FORMATS,
    TABLE_EXTENSIONS,
    TAR_SUFFIXES,
    CaptionProblem,
    ImportSourceError,
    Unit,
)


@dataclass
class ImportSource:
    format: str
    units: list[Unit]  # the shards, in order
    root: Path | None  # local image paths must resolve below this; None for object stores
    display: str
    # The folder or prefix the shards were listed from: shards registered under it before and absent
    # now have vanished. Empty for single files and patterns.
    listed_from: str = ""

    @property
    def paths(self) -> list[Path]:
        return [Path(u.uri) for u in self.units]


def within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def import_roots() -> list[Path]:
    return [Path(root).resolve() for root in settings.LOUPE_IMPORT_ROOTS if storage.is_local(root)]


def _remote_roots() -> list[str]:
    return [root.rstrip("/") + "/" for root in settings.LOUPE_IMPORT_ROOTS if not storage.is_local(root)]


def source_check_allowed(path: Path | str) -> None:
    """Refuse sources outside LOUPE_IMPORT_ROOTS when it is set (object-store roots are URI prefixes
    such as ``s3://bucket/pools/``)."""
    if not settings.LOUPE_IMPORT_ROOTS:
        return
    uri = str(path)
    if storage.is_local(uri):
        resolved = Path(storage.local_path(uri)).expanduser().resolve()
        if any(within(resolved, root) for root in import_roots()):
            return
    elif any(uri.rstrip("/") + "/" == r or uri.startswith(r) for r in _remote_roots()):
        return
    shown = ", ".join(settings.LOUPE_IMPORT_ROOTS)
    raise ImportSourceError(f"{path} is outside the allowed import roots ({shown})")


def _format_of_file(name: str) -> str:
    lower = name.lower()
    if lower.endswith(TAR_SUFFIXES):
        return "webdataset"
    suffix = os.path.splitext(lower)[1]
    fmt = TABLE_EXTENSIONS.get(suffix)
    if not fmt:
        if lower.endswith((".tar.gz", ".tgz")):
            raise ImportSourceError(
                f"{name}: compressed shards cannot be indexed in place (an image inside has no byte offset); "
                "decompress them to .tar"
            )
        raise ImportSourceError(
            f"{name}: cannot tell the format from the extension {suffix!r}; pass --format {'|'.join(FORMATS)}"
        )
    return fmt


def _companion(uri: str, names: set[str]) -> str:
    """img2dataset's metadata beside a shard: ``00000.tar`` or ``00000/`` -> ``00000.parquet``."""
    stem = storage.uri_name(uri)
    stem = stem[: -len(".tar")] if stem.lower().endswith(".tar") else stem
    return storage.uri_join(storage.uri_parent(uri), f"{stem}.parquet") if f"{stem}.parquet" in names else ""


def _units_of(fmt: str, uris: list[str], sibling_names: set[str]) -> list[Unit]:
    if fmt in ("webdataset", "files"):
        return [Unit(u, fmt, _companion(u, sibling_names)) for u in uris]
    return [Unit(u, fmt) for u in uris]


def _folder_units(uri: str, format: str | None) -> tuple[str, list[Unit]]:
    """What a folder (or object-store prefix) holds: .tar shards (webdataset), img2dataset ``files``
    output (``00000/`` folders beside ``00000.parquet``), Parquet shards, or images with sidecars."""
    entries = storage.listdir(uri)
    names = {storage.uri_name(u) for u, _ in entries}
    tars = [u for u, is_dir in entries if not is_dir and u.lower().endswith(TAR_SUFFIXES)]
    parquets = [u for u, is_dir in entries if not is_dir and u.lower().endswith(".parquet")]
    shard_dirs = [u for u, is_dir in entries if is_dir and f"{storage.uri_name(u)}.parquet" in names]
    fmt = format or ("webdataset" if tars else "files" if shard_dirs else "parquet" if parquets else "folder")
    if fmt == "webdataset":
        if not tars:
            raise ImportSourceError(f"{uri}: no .tar shards in this folder")
        return fmt, _units_of(fmt, tars, names)
    if fmt == "files":
        if not shard_dirs:
            raise ImportSourceError(
                f"{uri}: no img2dataset files output here (folders 00000/ beside 00000.parquet)"
            )
        return fmt, _units_of(fmt, shard_dirs, names)
    if fmt == "parquet":
        if not parquets:
            raise ImportSourceError(f"{uri}: no .parquet files in this folder")
        return fmt, _units_of(fmt, parquets, names)
    if fmt != "folder":
        raise ImportSourceError(f"{uri} is a folder; format {fmt} needs a file (or a folder of .parquet)")
    if not storage.is_local(uri):
        raise ImportSourceError(f"{uri}: folders of loose images are read from local disk only")
    return fmt, [Unit(uri, "folder")]


def _pattern_units(source: str, format: str | None) -> tuple[str, list[Unit]]:
    """A glob and/or brace pattern. A brace item naming one shard exactly stays in the list even when
    it is not there: asking for 00000..00099 and silently getting fewer would hide a missing shard
    (it is reported as unreachable instead)."""
    found: set[str] = set()
    for item in braceexpand(source):
        literal = not any(ch in item for ch in "*?[")
        if storage.is_local(item):
            path = os.path.expanduser(storage.local_path(item))
            found |= {os.path.realpath(path)} if literal else {os.path.realpath(p) for p in glob.glob(path)}
        else:
            found |= {item} if literal else set(storage.glob(item))
    if not found:
        raise ImportSourceError(f"no shard matches {source}")
    ordered = sorted(found)
    fmt = format or _format_of_file(ordered[0])
    if fmt not in ("webdataset", "parquet"):
        raise ImportSourceError(f"patterns are for .tar or .parquet shards, not {fmt}: {source}")
    wrong = [u for u in ordered if _format_of_file(u) != fmt]
    if wrong:
        raise ImportSourceError(f"{source} matches files of another format, e.g. {wrong[0]}")
    for uri in ordered:
        source_check_allowed(uri)
    names_by_parent: dict[str, set[str]] = {}
    units = []
    for uri in ordered:
        parent = storage.uri_parent(uri)
        if parent not in names_by_parent:
            try:
                names_by_parent[parent] = {storage.uri_name(u) for u, _ in storage.listdir(parent)}
            except storage.StorageError:
                names_by_parent[parent] = set()  # reported per shard when it is read
        units += _units_of(fmt, [uri], names_by_parent[parent])
    return fmt, units


def source_resolve(source: str, *, format: str | None = None, root: str | None = None) -> ImportSource:
    """Find what ``source`` names: a folder or prefix of shards (.tar, .parquet, img2dataset files
    output), a single shard or table, a glob or brace pattern of shards, or a folder of images; local
    paths, ``file://`` and object-store URIs (``s3://bucket/prefix``)."""
    if format and format not in FORMATS:
        raise ImportSourceError(f"unknown format {format!r} (one of: {', '.join(FORMATS)})")
    local = storage.is_local(source)
    path = Path(storage.local_path(source)).expanduser() if local else None
    pattern = any(ch in source for ch in "*?[{")
    if pattern and not (local and path.exists()):
        fmt, units = _pattern_units(source, format)
        base = os.path.commonpath([storage.uri_parent(u.uri) for u in units]) if local else ""
        return ImportSource(fmt, units, _root_for(Path(base), root) if local else None, source)
    source_check_allowed(source)
    if local:
        if not path.exists():
            raise ImportSourceError(f"{source}: no such file or folder")
        uri = str(path.resolve())
    else:
        uri = storage.uri_normalise(source)
        try:
            info = storage.stat(uri)
        except storage.StorageError as exc:
            raise ImportSourceError(str(exc)) from exc
    is_dir = path.is_dir() if local else info.is_dir
    if is_dir:
        fmt, units = _folder_units(uri, format)
        root_path = _root_for(Path(uri), root) if local else None
        return ImportSource(fmt, units, root_path, uri, listed_from=uri if fmt != "folder" else "")
    fmt = format or _format_of_file(uri)
    if fmt in ("folder", "files"):
        raise ImportSourceError(f"{uri} is a file, not a folder")
    if fmt in ("csv", "jsonl") and not local:
        raise ImportSourceError(f"{uri}: CSV and JSONL tables are read from local disk only")
    names = {storage.uri_name(u) for u, _ in storage.listdir(storage.uri_parent(uri))}
    units = _units_of(fmt, [uri], names)
    return ImportSource(fmt, units, _root_for(Path(uri).parent, root) if local else None, uri)


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


def file_read_within(path: str, root: Path | None, *, max_bytes: int, what: str) -> bytes:
    """A small file every import reads besides images (caption sidecars): resolved, links included, and
    refused unless it is a regular file below ``root`` and at most ``max_bytes`` (from its size, before
    reading). Raises ``CaptionProblem`` with the reason. Object stores have no links: read as they are."""
    if not storage.is_local(path):
        try:
            return storage.read_all(path, max_bytes=max_bytes)
        except storage.StorageError as exc:
            raise CaptionProblem("unreadable_sidecar", f"{what}: {exc}") from exc
    real, st = path_resolve(path)
    if root is not None and not path_within(real, root):
        raise CaptionProblem("outside_root", f"{what} links outside the import root ({real})")
    if st is None or not stat.S_ISREG(st.st_mode):
        raise CaptionProblem("unreadable_sidecar", f"{what} is not a regular file")
    if st.st_size > max_bytes:
        raise CaptionProblem(
            "sidecar_too_large", f"{what} is {st.st_size:,} bytes; a caption file may hold {max_bytes:,}"
        )
    try:
        with open(real, "rb") as handle:
            return handle.read(max_bytes + 1)[:max_bytes]
    except OSError as exc:
        raise CaptionProblem("unreadable_sidecar", f"cannot read {what}: {exc.strerror}") from exc


# --- fingerprints ---------------------------------------------------------------------------------


def parquet_footer_digest(uri: str, size: int) -> str:
    """sha256 of a Parquet file's footer (schema, row groups, their offsets and statistics): two
    versions of a file with the same size and time stamp still differ here. '' when it has none."""
    if size < 12:
        return ""
    tail = storage.read_range(uri, size - 8, 8)
    if tail[4:] != b"PAR1":
        return ""
    footer_length = int.from_bytes(tail[:4], "little")
    if footer_length + 8 > size:
        return ""
    return hashlib.sha256(storage.read_range(uri, size - 8 - footer_length, footer_length)).hexdigest()


def file_fingerprint(uri: str) -> dict:
    """Size and mtime (ETag on object stores); for Parquet, the footer's digest too."""
    info = storage.stat(uri)
    out = info.as_dict()
    if uri.lower().endswith(".parquet"):
        out["footer_sha256"] = parquet_footer_digest(uri, info.size)
    return out


def unit_fingerprint(unit: Unit) -> dict:
    out = {"shard": file_fingerprint(unit.uri)}
    if unit.metadata_uri:
        out["metadata"] = file_fingerprint(unit.metadata_uri)
    return out
