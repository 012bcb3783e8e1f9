"""Near-identical captions of one image, by MiniLM sentence similarity (feeds cleaning).

Exact repeats cannot exist (one text per image is unique); this finds the "A dog on the beach." /
"a dog on the beach" kind. Embeddings come from the offline encoder's text tower (all-MiniLM-L6-v2) and
its cache, so a second pass re-encodes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import numpy as np
from django.db import transaction

from pool.models import Caption, CaptionStatus
from scoring.encoder_names import OFFLINE_DEFAULT
from scoring.encoders import encoder_load
from scoring.features import embedding_cache_for
from scoring.pipeline import texts_embed

BLOCK = 4096  # captions embedded per round trip to the cache


@dataclass(frozen=True)
class NearIdentical:
    caption_id: int
    duplicate_of: int
    cosine: float

    @property
    def reason(self) -> str:
        return f"near-identical to caption {self.duplicate_of} (cos {self.cosine:.2f})"


def _text_features(rows: list[tuple[int, int, str, str]]) -> np.ndarray:
    encoder = encoder_load(OFFLINE_DEFAULT)
    cache = embedding_cache_for(encoder)
    shas = [r[3] for r in rows]
    cached, found = cache.get_texts(shas)
    feats = np.zeros((len(rows), encoder.text_feature_dim), dtype=np.float32)
    if cached is not None:
        feats[found] = cached[found]
    missing = np.flatnonzero(~found)
    if len(missing):
        fresh, _ = texts_embed(encoder, [rows[i][2] for i in missing])
        cache.put_texts([shas[i] for i in missing], fresh)
        feats[missing] = fresh
    feats /= np.linalg.norm(feats, axis=1, keepdims=True).clip(min=1e-8)
    return feats


def _group_marks(ids: list[int], feats: np.ndarray, threshold: float) -> list[NearIdentical]:
    """Earlier captions win: a later one is marked against the first kept caption it matches."""
    marks, kept = [], []
    sims = feats @ feats.T
    for j in range(len(ids)):
        match = max(kept, key=lambda i: sims[i, j], default=None)
        if match is not None and sims[match, j] >= threshold:
            marks.append(NearIdentical(ids[j], ids[match], round(float(sims[match, j]), 4)))
        else:
            kept.append(j)
    return marks


def captions_near_identical(
    *, threshold: float = 0.92, image_ids: list[int] | None = None
) -> list[NearIdentical]:
    """Marks for captions (status ok) nearly identical to an earlier caption of the same image."""
    qs = Caption.objects.filter(status=CaptionStatus.OK)
    if image_ids is not None:
        qs = qs.filter(image_id__in=image_ids)
    rows_iter = (
        qs.order_by("image_id", "id").values_list("id", "image_id", "text", "text_sha256").iterator(5000)
    )
    marks: list[NearIdentical] = []
    block: list[list[tuple]] = []
    size = 0

    def flush() -> None:
        rows = [r for group in block for r in group]
        if not rows:
            return
        feats = _text_features(rows)
        start = 0
        for group in block:
            marks.extend(_group_marks([r[0] for r in group], feats[start : start + len(group)], threshold))
            start += len(group)

    for _, group_iter in groupby(rows_iter, key=lambda r: r[1]):
        group = list(group_iter)
        if len(group) < 2:
            continue
        block.append(group)
        size += len(group)
        if size >= BLOCK:
            flush()
            block, size = [], 0
    flush()
    return marks


def near_identical_marks_apply(*, marks: list[NearIdentical]) -> int:
    """Mark the captions ``duplicate`` with the reason; only captions still ok change. Returns how many."""
    changed = 0
    with transaction.atomic():
        for mark in marks:
            changed += Caption.objects.filter(pk=mark.caption_id, status=CaptionStatus.OK).update(
                status=CaptionStatus.DUPLICATE, status_reason=mark.reason
            )
    return changed
