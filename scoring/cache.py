"""Embedding cache: float16 feature rows per encoder, keyed by content (image sha256, caption text sha256).

Layout under ``EMBEDDING_CACHE_DIR``::

    <encoder slug>/images/<shard>.f16.npy   float16 [n, dim], memory-mapped when read
    <encoder slug>/images/<shard>.keys.npy  the n sha256 hex keys (S64), written last
    <encoder slug>/texts/...                 the same for caption texts

Shards are append-only and named uniquely, so many workers on many machines can write to one shared
folder without locks. Each file is written to a temp name and renamed; the keys file is renamed last
and is what makes a shard visible, so a crash never exposes a partial shard (an orphan ``.f16.npy``
without keys is ignored). A key present in two shards (two workers raced) holds the same vector.

Plain Python + numpy: no Django. ``root`` defaults to ``settings.EMBEDDING_CACHE_DIR``.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np


class CacheError(OSError):
    """The cache folder cannot be read or written; the message names the folder and the cause."""


def encoder_slug(encoder_name: str, fingerprint: str = "") -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_name).strip("_")[:150]
    return f"{slug}-{fingerprint}" if fingerprint else slug


class _Store:
    """One kind of rows (images or texts) of one encoder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._index: dict[bytes, tuple[str, int]] = {}
        self._seen: set[str] = set()
        self._arrays: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.dim: int | None = None

    def _refresh(self) -> None:
        if not self.folder.is_dir():
            return
        try:
            names = sorted(p.name[: -len(".keys.npy")] for p in self.folder.glob("*.keys.npy"))
        except OSError as exc:
            raise CacheError(f"Cannot list embedding cache folder {self.folder}: {exc}") from exc
        for shard in names:
            if shard in self._seen:
                continue
            try:
                keys = np.load(self.folder / f"{shard}.keys.npy")
            except (OSError, ValueError) as exc:
                raise CacheError(f"Unreadable cache shard {self.folder / shard}.keys.npy: {exc}") from exc
            for row, key in enumerate(keys.tolist()):
                self._index.setdefault(key, (shard, row))
            self._seen.add(shard)

    def _array(self, shard: str) -> np.ndarray:
        array = self._arrays.get(shard)
        if array is None:
            path = self.folder / f"{shard}.f16.npy"
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise CacheError(f"Unreadable cache shard {path}: {exc}") from exc
            self._arrays[shard] = array
        return array

    def get(self, shas: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        keys = [s.encode("ascii") for s in shas]
        with self._lock:
            if any(k not in self._index for k in keys):
                self._refresh()
            found = np.array([k in self._index for k in keys], dtype=bool)
            if not found.any():
                return None, found
            by_shard: dict[str, list[tuple[int, int]]] = {}
            for i, k in enumerate(keys):
                if found[i]:
                    shard, row = self._index[k]
                    by_shard.setdefault(shard, []).append((i, row))
            out: np.ndarray | None = None
            for shard, pairs in by_shard.items():
                array = self._array(shard)
                if out is None:
                    out = np.zeros((len(keys), array.shape[1]), dtype=np.float16)
                idx = np.array([i for i, _ in pairs])
                rows = np.array([r for _, r in pairs])
                order = np.argsort(rows)  # sorted reads of a memory-mapped file
                out[idx[order]] = array[rows[order]]
            return out, found

    def put(self, shas: list[str], array: np.ndarray) -> None:
        if len(shas) != len(array):
            raise ValueError(f"put: {len(shas)} keys but {len(array)} rows")
        if not shas:
            return
        keys = np.array([s.encode("ascii") for s in shas], dtype="S64")
        values = np.ascontiguousarray(array, dtype=np.float16)
        shard = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_atomic(self.folder / f"{shard}.f16.npy", values)
            self._write_atomic(self.folder / f"{shard}.keys.npy", keys)
        except OSError as exc:
            raise CacheError(
                f"Cannot write the embedding cache in {self.folder} ({exc.strerror or exc}); "
                f"check that the folder is writable and the disk is not full "
                f"(LOUPE_EMBEDDING_CACHE_DIR)."
            ) from exc
        with self._lock:
            for row, key in enumerate(keys.tolist()):
                self._index.setdefault(key, (shard, row))
            self._seen.add(shard)

    @staticmethod
    def _write_atomic(path: Path, array: np.ndarray) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._index)


class EmbeddingCache:
    """Image and text feature rows of one encoder. Thread-safe; several processes may share the folder."""

    def __init__(self, encoder_name: str, *, fingerprint: str = "", root: str | os.PathLike | None = None):
        if root is None:
            from django.conf import settings

            root = settings.EMBEDDING_CACHE_DIR
        self.encoder_name = encoder_name
        self.folder = Path(root) / encoder_slug(encoder_name, fingerprint)
        self.images = _Store(self.folder / "images")
        self.texts = _Store(self.folder / "texts")

    def get_images(self, shas: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """(float16 [len(shas), dim] with zeros where missing, or None if nothing found; found mask)."""
        return self.images.get(shas)

    def put_images(self, shas: list[str], array: np.ndarray) -> None:
        self.images.put(shas, array)

    def get_texts(self, shas: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        return self.texts.get(shas)

    def put_texts(self, shas: list[str], array: np.ndarray) -> None:
        self.texts.put(shas, array)
