"""The one way Loupe reads the pool's bytes where the user keeps them: local paths, ``file://`` and
``s3://`` (or any other fsspec protocol) URIs.

No Django here: DataLoader worker processes (``scoring.pipeline``) read through the same functions with
plain, picklable ``Locator`` values. Credentials and endpoints come from the usual places: the AWS
environment variables / ``~/.aws`` for s3fs, and fsspec's own configuration (``FSSPEC_S3_ENDPOINT_URL``,
``~/.config/fsspec/*.json``). Local paths bypass fsspec: a ``pread`` is the cheapest read there is.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
from dataclasses import dataclass

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.I)
# Object stores answer a range request per read; a large block makes a sequential scan of a shard a
# few requests instead of thousands.
SEQUENTIAL_BLOCK = 8 << 20


class StorageError(OSError):
    """A URI that cannot be read (missing, unreachable, refused); the message says which and why."""


def scheme(uri: str) -> str:
    """``s3``, ``gs``, ...; ``file`` for local paths and ``file://`` URIs."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else "file"


def is_local(uri: str) -> bool:
    return scheme(uri) == "file"


def local_path(uri: str) -> str:
    """The file system path of a local URI (``file:///a/b`` -> ``/a/b``)."""
    return uri[len("file://") :] if uri.lower().startswith("file://") else uri


def uri_normalise(source: str) -> str:
    """A canonical string for a source: an absolute real path for local ones (links resolved, so the
    same file always gets the same shard row), the URI without a trailing slash otherwise."""
    if is_local(source):
        return os.path.realpath(os.path.expanduser(local_path(source)))
    return source.rstrip("/")


def uri_join(base: str, name: str) -> str:
    if is_local(base):
        return os.path.join(local_path(base), name)
    return f"{base.rstrip('/')}/{name}"


def uri_parent(uri: str) -> str:
    if is_local(uri):
        return os.path.dirname(local_path(uri))
    return uri.rstrip("/").rsplit("/", 1)[0]


def uri_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=16)
def _filesystem_for(protocol: str, pid: int):
    # One filesystem per protocol and process: s3fs holds connection pools and an event loop, which a
    # forked DataLoader worker must not share with its parent.
    import fsspec

    # No listings cache: a long-running worker must see shards added since it last listed a prefix.
    # Its own instance: fsspec's instance cache would outlive filesystems_forget().
    options = {"skip_instance_cache": True}
    if protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs"):
        options["use_listings_cache"] = False
    return fsspec.filesystem(protocol, **options)


def filesystems_forget() -> None:
    """Drop the cached filesystems (after a change of fsspec configuration, e.g. a new endpoint)."""
    _filesystem_for.cache_clear()
    with _row_groups_lock:
        _row_groups.clear()


def filesystem(uri: str):
    """(fsspec filesystem, path within it) for a remote URI."""
    from fsspec.core import split_protocol

    protocol, path = split_protocol(uri)
    return _filesystem_for(protocol, os.getpid()), path


def _remote_error(uri: str, exc: BaseException) -> StorageError:
    reason = f"{type(exc).__name__}: {exc}"[:300]
    return StorageError(f"cannot read {uri}: {reason}")


@dataclass(frozen=True)
class Stat:
    size: int
    mtime: float | None = None
    etag: str | None = None
    is_dir: bool = False

    def as_dict(self) -> dict:
        out: dict = {"size": self.size}
        if self.etag:
            out["etag"] = self.etag
        elif self.mtime is not None:
            out["mtime"] = self.mtime
        return out


def stat(uri: str) -> Stat:
    """Size and change marker (mtime locally, ETag on object stores). Raises ``StorageError``."""
    if is_local(uri):
        try:
            st = os.stat(local_path(uri))
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc.strerror or exc}") from exc
        return Stat(size=st.st_size, mtime=st.st_mtime, is_dir=os.path.isdir(local_path(uri)))
    fs, path = filesystem(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise StorageError(f"cannot read {uri}: no such object") from exc
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp raise many types for an unreachable store
        raise _remote_error(uri, exc) from exc
    etag = info.get("ETag") or info.get("etag")
    mtime = info.get("LastModified") or info.get("mtime")
    return Stat(
        size=int(info.get("size") or 0),
        mtime=mtime.timestamp() if hasattr(mtime, "timestamp") else mtime,
        etag=str(etag).strip('"') if etag else None,
        is_dir=info.get("type") == "directory",
    )


def exists(uri: str) -> bool:
    try:
        stat(uri)
    except StorageError:
        return False
    return True


def is_dir(uri: str) -> bool:
    try:
        return stat(uri).is_dir
    except StorageError:
        return False


def listdir(uri: str) -> list[tuple[str, bool]]:
    """(child URI, is a directory) of a folder or prefix, sorted by name."""
    if is_local(uri):
        path = local_path(uri)
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise StorageError(f"cannot list {uri}: {exc.strerror or exc}") from exc
        return [(os.path.join(path, n), os.path.isdir(os.path.join(path, n))) for n in names]
    fs, path = filesystem(uri)
    protocol = scheme(uri)
    try:
        entries = fs.ls(path, detail=True)
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(uri, exc) from exc
    return sorted(
        (f"{protocol}://{e['name'].rstrip('/')}", e.get("type") == "directory")
        for e in entries
        if e["name"].rstrip("/") != path.rstrip("/")
    )


def glob(pattern: str) -> list[str]:
    """URIs matching a glob on a remote store (local globs are the caller's, with ``glob.glob``)."""
    fs, path = filesystem(pattern)
    protocol = scheme(pattern)
    try:
        return sorted(f"{protocol}://{p}" for p in fs.glob(path))
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(pattern, exc) from exc


def open_uri(uri: str, *, block_size: int = SEQUENTIAL_BLOCK):
    """A binary file object; for object stores, buffered in large blocks for sequential scans."""
    if is_local(uri):
        try:
            return open(local_path(uri), "rb", buffering=1 << 20)  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc.strerror or exc}") from exc
    fs, path = filesystem(uri)
    try:
        return fs.open(path, "rb", block_size=block_size, cache_type="readahead")
    except FileNotFoundError as exc:
        raise StorageError(f"cannot read {uri}: no such object") from exc
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(uri, exc) from exc


def read_range(uri: str, offset: int, length: int) -> bytes:
    """Exactly ``length`` bytes at ``offset``; fewer means the file changed or was cut: an error."""
    if is_local(uri):
        try:
            fd = os.open(local_path(uri), os.O_RDONLY)
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc.strerror or exc}") from exc
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
    else:
        fs, path = filesystem(uri)
        try:
            data = fs.cat_file(path, start=offset, end=offset + length)
        except FileNotFoundError as exc:
            raise StorageError(f"cannot read {uri}: no such object") from exc
        except Exception as exc:  # noqa: BLE001
            raise _remote_error(uri, exc) from exc
    if len(data) != length:
        raise StorageError(
            f"{uri} holds {len(data)} of the {length} bytes expected at offset {offset}: "
            "the shard changed or was truncated since it was indexed"
        )
    return data


def read_all(uri: str, *, max_bytes: int | None = None) -> bytes:
    """A whole (small) file, refused when it is over ``max_bytes`` (from its size, before reading)."""
    if max_bytes is not None:
        size = stat(uri).size
        if size > max_bytes:
            raise StorageError(f"{uri} is {size:,} bytes, over the limit of {max_bytes:,}")
    with open_uri(uri, block_size=1 << 20) as handle:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise StorageError(f"{uri} grew over the limit of {max_bytes:,} bytes while being read")
    return data


# --- locators -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Locator:
    """Where one image's bytes are: a whole file (``uri``), a byte range of a shard (``offset`` and
    ``length``, a tar member's data), or a Parquet cell (``row_group``, ``row``, ``column``).
    ``sha256``, when known, is checked on every read: a shard rewritten in place never passes its new
    bytes off as the indexed image."""

    uri: str
    offset: int | None = None
    length: int | None = None
    row_group: int | None = None
    row: int | None = None
    column: str | None = None
    sha256: str | None = None

    def describe(self) -> str:
        if self.offset is not None:
            return f"{self.uri} @ {self.offset}+{self.length}"
        if self.row_group is not None:
            return f"{self.uri} row group {self.row_group} row {self.row}"
        return self.uri


class BytesChanged(StorageError):
    pass


# The image column of the last Parquet row groups read, per process: pages and scoring read images
# in location order, so consecutive reads mostly hit the same row group.
_row_groups: dict[tuple[str, int, str], object] = {}
_row_groups_lock = threading.Lock()
ROW_GROUPS_CACHED = 2


def _parquet_cell(uri: str, row_group: int, row: int, column: str) -> bytes:
    key = (uri, row_group, column)
    with _row_groups_lock:
        values = _row_groups.get(key)
    if values is None:
        import pyarrow.parquet as pq

        try:
            with open_uri(uri, block_size=1 << 20) as handle:
                values = pq.ParquetFile(handle).read_row_group(row_group, columns=[column]).column(0)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for damaged files
            raise StorageError(f"cannot read {uri} row group {row_group}: {exc}") from exc
        with _row_groups_lock:
            while len(_row_groups) >= ROW_GROUPS_CACHED:
                _row_groups.pop(next(iter(_row_groups)))
            _row_groups[key] = values
    try:
        value = values[row].as_py()
    except IndexError as exc:
        raise StorageError(f"{uri} row group {row_group} has no row {row}: the file changed") from exc
    if isinstance(value, dict):  # Hugging Face style {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if not isinstance(value, bytes | bytearray):
        raise StorageError(f"{uri} row group {row_group} row {row}: column {column} holds no image bytes")
    return bytes(value)


def locator_read(locator: Locator) -> bytes:
    """The image's bytes, checked against its sha256 when the locator carries one."""
    if locator.offset is not None:
        data = read_range(locator.uri, locator.offset, int(locator.length or 0))
    elif locator.row_group is not None:
        data = _parquet_cell(locator.uri, locator.row_group, int(locator.row or 0), locator.column or "jpg")
    else:
        data = read_all(locator.uri)
    if locator.sha256 and hashlib.sha256(data).hexdigest() != locator.sha256:
        raise BytesChanged(
            f"the bytes at {locator.describe()} are not the image that was indexed there "
            "(sha256 differs): the source changed since the import"
        )
    return data
