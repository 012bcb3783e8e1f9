"""Features laid out by pool shard: what the shard pass writes and what a bulk rescore streams.

The content-keyed cache (``scoring.cache``) answers "the vector of this image" for any caller; at ten
million pairs a rescore wants the opposite: every vector, in the pool's order, without an index of ten
million keys in memory. So the shard pass also writes, per pool shard and encoder identity::

    <EMBEDDING_CACHE_DIR>/<encoder slug-fingerprint>/pool_shards/<shard pk>/
        images.f16.npy            float16 [n_images, dim]    one row per image of the shard
        image_ids.i8.npy          int64   [n_images]         Image pks, ascending
        texts.f16.npy             float16 [n_captions, dim]  one row per caption of those images
        caption_ids.i8.npy        int64   [n_captions]       Caption pks, ascending
        caption_image_row.i4.npy  int32   [n_captions]       row in images.f16.npy of each caption's image
        done.json                 counts, dims and encoder identity; written last

A shard's folder is written under a temporary name and renamed into place, ``done.json`` included, so
a reader sees a whole shard or none, and rewriting a shard (the pass rerun) replaces it whole. Readers
memory-map the arrays: memory stays flat with the pool's size.

Plain Python + numpy: no Django (``root`` is passed in by callers).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoring.cache import CacheError, encoder_slug

FOLDER = "pool_shards"
DONE = "done.json"


@dataclass
class ShardFeatures:
    """One pool shard's features (memory-mapped arrays)."""

    shard_id: int
    image_ids: np.ndarray
    images: np.ndarray
    caption_ids: np.ndarray
    texts: np.ndarray
    caption_image_row: np.ndarray
    meta: dict

    def pair_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(image rows, text rows) aligned with ``caption_ids``, as float16."""
        return np.asarray(self.images)[self.caption_image_row], np.asarray(self.texts)


def shard_features_root(root: str | os.PathLike, encoder_name: str, fingerprint: str = "") -> Path:
    return Path(root) / encoder_slug(encoder_name, fingerprint) / FOLDER


def shard_features_write(
    root: str | os.PathLike,
    encoder_name: str,
    fingerprint: str,
    shard_id: int,
    *,
    image_ids: np.ndarray,
    images: np.ndarray,
    caption_ids: np.ndarray,
    texts: np.ndarray,
    caption_image_row: np.ndarray,
    meta: dict | None = None,
) -> Path:
    """Write (or replace) one shard's features atomically; returns its folder."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    caption_ids = np.asarray(caption_ids, dtype=np.int64)
    caption_image_row = np.asarray(caption_image_row, dtype=np.int32)
    if (
        len(images) != len(image_ids)
        or len(texts) != len(caption_ids)
        or len(caption_image_row) != len(caption_ids)
    ):
        raise ValueError(
            f"shard {shard_id}: {len(image_ids)} image ids for {len(images)} image rows, "
            f"{len(caption_ids)} caption ids for {len(texts)} text rows and {len(caption_image_row)} links"
        )
    if len(caption_image_row) and (caption_image_row.min() < 0 or caption_image_row.max() >= len(image_ids)):
        raise ValueError(f"shard {shard_id}: a caption points outside the shard's {len(image_ids)} images")
    base = shard_features_root(root, encoder_name, fingerprint)
    final = base / str(int(shard_id))
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".tmp-{int(shard_id)}-"))
        try:
            np.save(tmp / "images.f16.npy", np.ascontiguousarray(images, dtype=np.float16))
            np.save(tmp / "image_ids.i8.npy", image_ids)
            np.save(tmp / "texts.f16.npy", np.ascontiguousarray(texts, dtype=np.float16))
            np.save(tmp / "caption_ids.i8.npy", caption_ids)
            np.save(tmp / "caption_image_row.i4.npy", caption_image_row)
            done = {
                "shard_id": int(shard_id),
                "encoder": encoder_name,
                "fingerprint": fingerprint,
                "images": int(len(image_ids)),
                "captions": int(len(caption_ids)),
                "image_dim": int(images.shape[1]) if images.ndim == 2 else 0,
                "text_dim": int(texts.shape[1]) if texts.ndim == 2 else 0,
                **(meta or {}),
            }
            (tmp / DONE).write_text(json.dumps(done))
            # Replace: move the old folder aside first (rename is atomic; a reader holding memory maps of
            # the old files keeps them until it closes them), then rename the new one into place.
            old = None
            if final.exists():
                old = base / f".old-{int(shard_id)}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as exc:
        raise CacheError(
            f"Cannot write shard features in {base} ({exc.strerror or exc}); check that the folder is "
            "writable and the disk is not full (LOUPE_EMBEDDING_CACHE_DIR)."
        ) from exc
    return final


def shard_features_read(folder: str | os.PathLike, *, whole: bool = False) -> ShardFeatures:
    """A shard's arrays, memory-mapped. ``whole=True`` (a reader that will touch every row, like the
    bulk rescore) asks the kernel to read the feature files ahead, in large sequential reads, while
    the caller does other work; otherwise pages are read as rows are touched."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / DONE).read_text())
        load = lambda name: np.load(folder / name, mmap_mode="r")  # noqa: E731
        features = ShardFeatures(
            shard_id=int(meta["shard_id"]),
            image_ids=load("image_ids.i8.npy"),
            images=load("images.f16.npy"),
            caption_ids=load("caption_ids.i8.npy"),
            texts=load("texts.f16.npy"),
            caption_image_row=load("caption_image_row.i4.npy"),
            meta=meta,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise CacheError(f"Unreadable shard features in {folder}: {exc}") from exc
    if whole:
        for array in (features.images, features.texts):
            _read_ahead(array)
    return features


def _read_ahead(array: np.ndarray) -> None:
    """madvise(WILLNEED) on a memory-mapped array's pages (no-op where the platform lacks it)."""
    mapping = getattr(array, "_mmap", None)
    advice = getattr(mmap, "MADV_WILLNEED", None)
    if mapping is None or advice is None:
        return
    with contextlib.suppress(OSError, ValueError):
        mapping.madvise(advice)


def shard_features_ids(root: str | os.PathLike, encoder_name: str, fingerprint: str = "") -> list[int]:
    """The pool shards (pks) whose features are complete for this encoder identity, ascending."""
    base = shard_features_root(root, encoder_name, fingerprint)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / DONE).is_file())


def shard_features_iter(
    root: str | os.PathLike, encoder_name: str, fingerprint: str = "", shard_ids: list[int] | None = None
) -> Iterator[ShardFeatures]:
    base = shard_features_root(root, encoder_name, fingerprint)
    for shard_id in shard_features_ids(root, encoder_name, fingerprint) if shard_ids is None else shard_ids:
        yield shard_features_read(base / str(int(shard_id)))


def shard_caption_rows(
    features: ShardFeatures, caption_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(caption ids found, their image rows, their text rows) for ``caption_ids`` in one shard's
    features: a binary search over the shard's sorted caption ids, no index held in memory."""
    wanted = np.unique(np.asarray(caption_ids, dtype=np.int64))
    ids = np.asarray(features.caption_ids)
    pos = np.searchsorted(ids, wanted)
    hit = pos < len(ids)
    hit[hit] = ids[pos[hit]] == wanted[hit]
    rows = pos[hit]
    image_rows = np.asarray(features.caption_image_row)[rows]
    return wanted[hit], np.asarray(features.images[image_rows]), np.asarray(features.texts[rows])
