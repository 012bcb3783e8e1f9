"""Pair features through the embedding cache: each image and each distinct text is embedded at most
once per encoder identity (name + weights fingerprint), and only when the cache lacks it."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings

from pool.locate import LOCATOR_FIELDS, locator_from_values
from pool.models import Caption
from pool.storage import Locator
from scoring.cache import EmbeddingCache
from scoring.encoders import Encoder, encoder_load
from scoring.pipeline import images_embed, texts_embed

logger = logging.getLogger(__name__)


_caches: dict[tuple[str, str, str], EmbeddingCache] = {}
_caches_lock = threading.Lock()


def embedding_cache_for(encoder: Encoder) -> EmbeddingCache:
    root = str(settings.EMBEDDING_CACHE_DIR)
    key = (encoder.name, encoder.fingerprint, root)
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = EmbeddingCache(encoder.name, fingerprint=encoder.fingerprint, root=root)
        return cache


@dataclass(frozen=True)
class PairRow:
    caption_id: int
    text: str
    text_sha256: str
    image_sha256: str
    # A local file path, or where an image indexed in place lives (picklable, for DataLoader workers).
    image_path: str | Locator


@dataclass
class PairFeatures:
    """Features of the readable pairs, aligned with ``caption_ids``; unreadable ones are in ``errors``."""

    caption_ids: list[int]
    image: np.ndarray
    text: np.ndarray
    truncated: list[bool]
    errors: dict[int, str] = field(default_factory=dict)


def pair_rows(caption_ids) -> list[PairRow]:
    """The pairs with where their images' bytes are: a media copy's path, or a locator in its shard."""
    rows = Caption.objects.filter(id__in=list(caption_ids)).values_list(
        "id", "text", "text_sha256", *(f"image__{f}" for f in LOCATOR_FIELDS)
    )
    media = Path(settings.MEDIA_ROOT)
    out = []
    for cid, text, tsha, *location in rows:
        if location[1]:  # a copy under MEDIA_ROOT: a plain path, as before
            image: str | Locator = str(media / location[1])
        else:
            image = locator_from_values(*location, media_root=media)
        out.append(PairRow(cid, text, tsha, location[0], image))
    return out


def _location_order(image: str | Locator) -> tuple:
    if isinstance(image, Locator):
        return (image.uri, image.row_group or 0, image.offset or 0, image.row or 0)
    return (image, 0, 0, 0)


def pair_features(*, encoder: Encoder, rows: list[PairRow], progress=None) -> PairFeatures:
    """Features of ``rows``, each image and each distinct text embedded at most once and only when
    the cache lacks it. Unreadable images are not cached, so a repaired file is read again later."""
    cache = embedding_cache_for(encoder)

    image_shas = list(dict.fromkeys(r.image_sha256 for r in rows))
    cached, found = cache.get_images(image_shas)
    image_feats = np.zeros((len(image_shas), encoder.image_feature_dim), dtype=np.float32)
    if cached is not None:
        image_feats[found] = cached[found].astype(np.float32)
    image_errors: dict[str, str] = {}
    missing = [i for i, ok in enumerate(found) if not ok]
    if missing:
        path_of = {r.image_sha256: r.image_path for r in rows}
        # Shard order: reads of one shard (and one Parquet row group) follow each other.
        missing.sort(key=lambda i: _location_order(path_of[image_shas[i]]))
        paths = [path_of[image_shas[i]] for i in missing]
        feats, errors = images_embed(encoder, paths, progress=progress)
        good = [j for j in range(len(missing)) if j not in errors]
        if good:
            cache.put_images([image_shas[missing[j]] for j in good], feats[good])
            image_feats[[missing[j] for j in good]] = feats[good].astype(np.float16).astype(np.float32)
        for j, reason in errors.items():
            image_errors[image_shas[missing[j]]] = reason

    text_of = {r.text_sha256: r.text for r in rows}
    text_shas = list(text_of)
    cached, found = cache.get_texts(text_shas)
    text_feats = np.zeros((len(text_shas), encoder.text_feature_dim), dtype=np.float32)
    if cached is not None:
        text_feats[found] = cached[found].astype(np.float32)
    missing = [i for i, ok in enumerate(found) if not ok]
    if missing:
        feats, _ = texts_embed(encoder, [text_of[text_shas[i]] for i in missing])
        cache.put_texts([text_shas[i] for i in missing], feats)
        # Rows read back from the cache are float16: round fresh ones the same way so a rescore of
        # cached pairs gives bit-identical scores.
        text_feats[missing] = feats.astype(np.float16).astype(np.float32)
    truncated_of = dict(zip(text_shas, encoder.text_truncated([text_of[s] for s in text_shas]), strict=True))

    image_row = {sha: i for i, sha in enumerate(image_shas)}
    text_row = {sha: i for i, sha in enumerate(text_shas)}
    kept = [r for r in rows if r.image_sha256 not in image_errors]
    return PairFeatures(
        caption_ids=[r.caption_id for r in kept],
        image=image_feats[[image_row[r.image_sha256] for r in kept]],
        text=text_feats[[text_row[r.text_sha256] for r in kept]],
        truncated=[truncated_of[r.text_sha256] for r in kept],
        errors={r.caption_id: image_errors[r.image_sha256] for r in rows if r.image_sha256 in image_errors},
    )


def caption_features(*, encoder: str, caption_ids: list[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(image features, text features, caption ids of those rows), float32, computing and caching
    what is missing. Captions whose image cannot be read (or that do not exist) are left out: the
    third element is the list of ids the rows belong to, in the order of ``caption_ids``."""
    enc = encoder_load(encoder)
    order = {cid: i for i, cid in enumerate(dict.fromkeys(caption_ids))}
    rows = sorted(pair_rows(order), key=lambda r: order[r.caption_id])
    feats = pair_features(encoder=enc, rows=rows)
    if feats.errors:
        logger.warning(
            "caption_features(%s): %d captions left out: %s", encoder, len(feats.errors), feats.errors
        )
    return feats.image, feats.text, feats.caption_ids


def caption_features_by_shard(
    *, encoder: str, caption_ids: list[int]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{caption id: (image row, text row)} read from the shard pass's by-shard features (float32), for
    the captions whose shard has them; nothing is decoded or encoded. Others are simply absent: callers
    fall back to ``caption_features``. This is what lets selection over a 10M-pair pool read only the
    rows it needs, by memory map, without the content-keyed cache's in-memory index."""
    from scoring.encoder_names import encoder_fingerprint
    from scoring.shard_features import (
        shard_caption_rows,
        shard_features_ids,
        shard_features_read,
        shard_features_root,
    )

    if not caption_ids:
        return {}
    root = settings.EMBEDDING_CACHE_DIR
    fingerprint = encoder_fingerprint(encoder)
    available = set(shard_features_ids(root, encoder, fingerprint))
    if not available:
        return {}
    by_shard: dict[int, list[int]] = {}
    for cid, shard_id in Caption.objects.filter(id__in=list(caption_ids)).values_list(
        "id", "image__shard_id"
    ):
        if shard_id in available:
            by_shard.setdefault(shard_id, []).append(cid)
    base = shard_features_root(root, encoder, fingerprint)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for shard_id, ids in by_shard.items():
        found, image, text = shard_caption_rows(shard_features_read(base / str(shard_id)), np.array(ids))
        image, text = image.astype(np.float32), text.astype(np.float32)
        for i, cid in enumerate(found.tolist()):
            out[cid] = (image[i], text[i])
    return out
