"""Cleaning rules as plain functions (no database): near-duplicate grouping by perceptual hash, and the
caption checks. ``pool.cleaning_runs.pool_clean`` feeds them from the database and writes the marks.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

HASH_BITS = 64
# Largest block compared at once inside one bucket: bounds memory to BLOCK * bucket size booleans.
BLOCK = 2048


class UnionFind:
    """Over the indices that appear in a pair only: most images have no near duplicate at all."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(i, i) != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def phash_to_int(value: str) -> int:
    return int(value, 16) if value else 0


def band_masks(radius: int, bits: int = HASH_BITS) -> list[tuple[int, int]]:
    """Split ``bits`` into ``radius + 1`` contiguous bands as (shift, width).

    Pigeonhole: two hashes within Hamming distance ``radius`` differ in at most ``radius`` bands, so
    they agree exactly on at least one of ``radius + 1`` bands. Bucketing by each band's value finds
    every candidate pair without comparing all pairs (multi-index hashing, Norouzi et al. 2012).
    """
    count = max(1, min(radius + 1, bits))
    widths = [bits // count + (1 if i < bits % count else 0) for i in range(count)]
    bands, shift = [], 0
    for width in widths:
        bands.append((shift, width))
        shift += width
    return bands


def _popcount(values: np.ndarray) -> np.ndarray:
    return np.bitwise_count(values)


def near_duplicate_pairs(hashes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All index pairs (i < j) whose 64-bit hashes are within ``radius`` bits, with their distances.

    Work is proportional to the sum over bands of (bucket size)^2, not n^2: images only meet images
    that share an exact band value.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found_i, found_j, found_d = [], [], []
    if n < 2:
        empty = np.array([], dtype=np.int64)
        return empty, empty, empty
    for shift, width in band_masks(radius):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        for start, end in zip(starts, ends, strict=True):
            if end - start < 2:
                continue
            members = order[start:end]
            member_hashes = hashes[members]
            for block_start in range(0, len(members), BLOCK):
                block = member_hashes[block_start : block_start + BLOCK]
                distance = _popcount(block[:, None] ^ member_hashes[None, :])
                rows, cols = np.nonzero(distance <= radius)
                rows_global = rows + block_start
                keep = rows_global < cols
                a, b = members[rows_global[keep]], members[cols[keep]]
                found_i.append(np.minimum(a, b))
                found_j.append(np.maximum(a, b))
                found_d.append(distance[rows[keep], cols[keep]].astype(np.int64))
    if not found_i:
        empty = np.array([], dtype=np.int64)
        return empty, empty, empty
    i, j, d = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
    # A pair agreeing on several bands is found once per band.
    pairs = np.unique(np.stack([i, j, d], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1], pairs[:, 2]


@dataclass(frozen=True)
class DuplicateMark:
    index: int  # the image marked
    keeper: int  # the index of the image kept for its group
    distance: int  # Hamming distance to the keeper (0 with the same size means the same picture)


def near_duplicate_groups(
    hashes: np.ndarray, areas: np.ndarray, radius: int
) -> tuple[list[DuplicateMark], np.ndarray]:
    """Group images whose hashes chain within ``radius`` (union-find); keep the highest resolution.

    Returns the marks for every non-kept member and, for each index, the index of its group's keeper
    (itself when alone). Ties in area keep the lowest index, i.e. the oldest image.
    """
    n = len(hashes)
    i, j, _ = near_duplicate_pairs(hashes, radius)
    groups = UnionFind()
    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        groups.union(a, b)
    keeper = np.arange(n, dtype=np.int64)
    if len(i) == 0:
        return [], keeper
    involved = np.unique(np.concatenate([i, j]))
    roots = np.array([groups.find(int(x)) for x in involved], dtype=np.int64)
    best: dict[int, int] = {}
    for index, root in zip(involved.tolist(), roots.tolist(), strict=True):
        current = best.get(root)
        if current is None or (areas[index], -index) > (areas[current], -current):
            best[root] = index
    hashes = np.asarray(hashes, dtype=np.uint64)
    marks = []
    for index, root in zip(involved.tolist(), roots.tolist(), strict=True):
        kept = best[root]
        keeper[index] = kept
        if index != kept:
            distance = int(_popcount(hashes[index] ^ hashes[kept]))
            marks.append(DuplicateMark(index=index, keeper=kept, distance=distance))
    return marks, keeper


# --- captions -------------------------------------------------------------------------------------

BOILERPLATE = {
    "image",
    "images",
    "img",
    "photo",
    "photos",
    "picture",
    "pic",
    "untitled",
    "no title",
    "notitle",
    "no caption",
    "caption",
    "thumbnail",
    "thumb",
    "placeholder",
    "stock photo",
    "stock image",
    "default",
    "unknown",
    "null",
    "none",
    "nan",
    "n a",
    "na",
    "todo",
    "tbd",
    "click here",
    "click to enlarge",
    "alt",
    "alt text",
    "image description",
    "description",
    "title",
    "undefined",
    "empty",
    "blank",
}
_FILE_NAME = re.compile(
    r"^[\w\-. ()]+\.(jpe?g|png|gif|webp|bmp|tiff?|svg|heic|raw|cr2|nef)$|"
    r"^(img|image|dsc|dscn|dscf|dcim|pxl|photo|pic|screenshot|scan|mvimg|wp)[_\- ]?\d+([_\- ]\d+)*$",
    re.IGNORECASE,
)
MIN_CAPTION_CHARS = 3


def caption_normalise(text: str) -> str:
    """Case, accents' composition, punctuation and spacing removed: what makes two captions "the same"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text)
    return " ".join(text.split())


def caption_check(text: str) -> tuple[str, str]:
    """(status, reason) for one caption's own text: ``empty``, ``trivial`` or ``ok``."""
    stripped = text.strip()
    if not stripped:
        return "empty", "empty caption"
    if len(stripped) < MIN_CAPTION_CHARS:
        return "trivial", f"shorter than {MIN_CAPTION_CHARS} characters"
    if not any(ch.isalpha() for ch in stripped):
        return "trivial", "no letters (only digits, punctuation or symbols)"
    if _FILE_NAME.match(stripped):
        return "trivial", "looks like a file name"
    if caption_normalise(stripped) in BOILERPLATE:
        return "trivial", f"boilerplate text ({stripped[:40]!r})"
    return "ok", ""
