"""Cleaning rules as plain functions (no database): near-duplicate grouping by perceptual hash, and the
caption checks. ``pool.cleaning_runs.pool_clean`` feeds them from the database and writes the marks.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

HASH_BITS = 64
# Most hash comparisons held at once when a bucket is compared as a matrix: 4M uint64 XORs are 32 MB.
BLOCK_ELEMENTS = 1 << 22
# Buckets larger than this are compared as matrix blocks: the offset-by-offset comparison costs one NumPy
# pass per member, which only pays for itself while buckets stay a few dozen hashes.
LARGE_BUCKET = 256
# Hashes per part when the keys that share a first band are searched part by part (distinct_hash_pairs):
# 32k uint64 values (256 KB) and their temporaries stay in L2/L3 cache. 16k-64k measured within 5%.
PART_SIZE = 1 << 15
# Relative costs for choosing the number of bands, in candidate pairs checked by the offset passes (~10 ns of
# CPU each with NumPy 2.4 on the development machine): building, sorting and scanning one key costs about
# 4.5 of them per hash (fitted on 1M random hashes, 8 bands against 9); one pair of an all-pairs matrix
# block about 0.3.
KEY_COST_PER_HASH = 4.5
BLOCK_COST_PER_PAIR = 0.3


def phash_to_int(value: str) -> int:
    return int(value, 16) if value else 0


def band_split(count: int, bits: int = HASH_BITS) -> list[tuple[int, int]]:
    """Split ``bits`` into ``count`` contiguous bands as (shift, width), the first ones a bit wider."""
    widths = [bits // count + (1 if i < bits % count else 0) for i in range(count)]
    shifts = [sum(widths[:i]) for i in range(count)]
    return list(zip(shifts, widths, strict=True))


def band_masks(radius: int, bits: int = HASH_BITS) -> list[tuple[int, int]]:
    """The ``radius + 1`` bands of plain multi-index hashing (Norouzi et al. 2012): two hashes within
    ``radius`` bits agree exactly on at least one of them (pigeonhole)."""
    return band_split(max(1, min(radius + 1, bits)), bits)


def band_count_choose(n: int, radius: int) -> int | None:
    """How many bands to split the hashes into for ``n`` distinct hashes, or None to compare all pairs.

    With m bands (m > radius), two hashes within ``radius`` bits differ in at most ``radius`` bands, so
    they agree exactly on at least m - radius of them: bucketing on every combination of m - radius bands
    meets every such pair. More bands means more combinations, C(m, radius), each a sort of the n hashes,
    but longer keys, hence smaller buckets (n / 2^key_bits on random hashes) and fewer candidate pairs.
    The cheapest m grows with log n so that buckets stay at a few hashes and the work is C(m, radius)
    sorts of n, close to linear: at radius 6, 8 bands (28 keys of 16 bits) up to about 1.3M hashes, 9
    bands (84 keys of 21 bits) up to about 40M, 10 beyond. Between two steps the buckets grow with n, and
    each step triples the keys, so 10x the hashes costs about 15x the time, against 100x for plain
    multi-index hashing (m = radius + 1, one ~9-bit band per key, buckets of n / 512).

    The number of keys grows quickly with the radius (radius 10 at 10M hashes: 15 bands, 3,003 keys, so
    about 50x the work of radius 6). From a radius of about 14 (16 at 10M hashes) no band count beats
    comparing all pairs in blocks, which is what None selects: quadratic, but exact and in bounded memory
    (at 32 bits half of all random pairs are within the radius anyway).
    """
    if n < 2:
        return None
    index_bits = max(1, (n - 1).bit_length())
    best, best_cost = None, n * (n - 1) / 2 * BLOCK_COST_PER_PAIR
    for count in range(radius + 1, HASH_BITS + 1):
        key_bands = count - radius
        widths = sorted(width for _, width in band_split(count))
        # The key is truncated to leave room for the hash's index in one uint64 (see _pairs_sharing_key).
        key_bits = min(sum(widths[:key_bands]), HASH_BITS - index_bits)
        keys = math.comb(count, key_bands)
        cost = keys * (n * KEY_COST_PER_HASH + n * (n - 1) / 2 / 2.0**key_bits)
        if cost < best_cost:
            best, best_cost = count, cost
    return best


def _empty_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    empty = np.array([], dtype=np.int64)
    return empty, empty, empty.copy()


def _all_pairs_within(
    values: np.ndarray, radius: int, min_gap: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of positions (a, b), b - a >= ``min_gap``, of ``values`` within ``radius``, compared as
    matrix blocks of bounded size."""
    n = len(values)
    rows_per_block = max(1, BLOCK_ELEMENTS // max(n, 1))
    found_a, found_b, found_d = [], [], []
    for start in range(0, n - min_gap, rows_per_block):
        stop = min(n - min_gap, start + rows_per_block)
        # Columns from ``start + min_gap`` on: closer pairs, and those below the diagonal, are someone
        # else's. Column c of row r is then at gap c - r + min_gap.
        distance = np.bitwise_count(values[start:stop, None] ^ values[None, start + min_gap :])
        rows, cols = np.nonzero(distance <= radius)
        keep = cols >= rows
        rows, cols = rows[keep], cols[keep]
        found_a.append(rows + start)
        found_b.append(cols + start + min_gap)
        found_d.append(distance[rows, cols])
    if not found_a:
        return _empty_pairs()
    return np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_d)


def _first_key_only(xor: np.ndarray, combo: tuple[int, ...], bands: list[tuple[int, int]]) -> np.ndarray:
    """Which pairs (given as ``a ^ b``) meet under ``combo`` before any other key.

    Keys are visited in ``itertools.combinations`` order, so the first key that holds both hashes is the
    first (m - radius) bands they agree on. The pair belongs to ``combo`` when it agrees on every band of
    ``combo`` (not implied by a shared key once the key is shortened to fit the index) and on no band
    outside ``combo`` that comes before its last band. Checking this on the few verified pairs replaces a
    ``np.unique`` over every pair found under every key.
    """
    keep = np.ones(len(xor), dtype=bool)
    for band in range(combo[-1] + 1):
        shift, width = bands[band]
        agree = ((xor >> np.uint64(shift)) & np.uint64((1 << width) - 1)) == 0
        keep &= agree if band in combo else ~agree
    return keep


def _pairs_sharing_key(
    values: np.ndarray, radius: int, bands: list[tuple[int, int]], combo: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of distinct ``values`` within ``radius`` whose bands in ``combo`` are equal, and that no
    earlier key meets (so each pair comes out of exactly one key)."""
    n = len(values)
    index_bits = max(1, (n - 1).bit_length())
    # In place: the key is rebuilt for every combination of every part, so no temporaries per band.
    key = np.zeros(n, dtype=np.uint64)
    band_value = np.empty(n, dtype=np.uint64)
    key_bits = 0
    for band in combo:
        shift, width = bands[band]
        np.right_shift(values, np.uint64(shift), out=band_value)
        np.bitwise_and(band_value, np.uint64((1 << width) - 1), out=band_value)
        np.left_shift(key, np.uint64(width), out=key)
        np.bitwise_or(key, band_value, out=key)
        key_bits += width
    del band_value
    # Any function of the combo's bands buckets correctly (verification is on the full hash), so the key
    # gives up low bits to make room for the index: then one plain uint64 sort (SIMD in NumPy) replaces an
    # argsort, which is about twice as slow.
    if key_bits > HASH_BITS - index_bits:
        np.right_shift(key, np.uint64(key_bits - (HASH_BITS - index_bits)), out=key)
    np.left_shift(key, np.uint64(index_bits), out=key)
    np.bitwise_or(key, np.arange(n, dtype=np.uint64), out=key)
    key.sort()
    order = (key & np.uint64((1 << index_bits) - 1)).astype(np.intp)
    np.right_shift(key, np.uint64(index_bits), out=key)
    # same_as_next[k]: positions k and k + 1 of the sorted order share a bucket.
    same_as_next = np.zeros(n, dtype=bool)
    np.equal(key[1:], key[:-1], out=same_as_next[:-1])
    del key
    sorted_values = values[order]

    # Offset passes: compare each position with the one ``offset`` further in the same bucket. The active
    # positions shrink to the buckets longer than ``offset``, so the work is the sum of squared bucket
    # sizes, in one NumPy pass per offset.
    found_a, found_b, found_d = [], [], []
    active = np.flatnonzero(same_as_next)
    offset = 1
    while active.size and offset < LARGE_BUCKET:
        distance = np.bitwise_count(sorted_values[active] ^ sorted_values[active + offset])
        hits = np.flatnonzero(distance <= radius)
        if hits.size:
            first = active[hits]
            found_a.append(order[first])
            found_b.append(order[first + offset])
            found_d.append(distance[hits])
        active = active[same_as_next[active + offset]]
        offset += 1
    if active.size:
        # What is left lies in a few huge buckets (skewed hashes), where a pass per offset would cost more
        # in NumPy calls than in comparisons: the remaining gaps go through matrix blocks.
        bucket_starts = np.flatnonzero(np.r_[True, ~same_as_next[:-1]])
        bucket_ends = np.r_[bucket_starts[1:], n]
        for bucket in np.unique(np.searchsorted(bucket_starts, active, side="right") - 1).tolist():
            start, end = int(bucket_starts[bucket]), int(bucket_ends[bucket])
            a, b, d = _all_pairs_within(sorted_values[start:end], radius, min_gap=offset)
            found_a.append(order[a + start])
            found_b.append(order[b + start])
            found_d.append(d)
    if not found_a:
        return _empty_pairs()
    a, b, d = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_d)
    keep = _first_key_only(values[a] ^ values[b], combo, bands)
    a, b = a[keep], b[keep]
    return np.minimum(a, b), np.maximum(a, b), d[keep]


def distinct_hash_pairs(
    values: np.ndarray, radius: int, band_count: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (p < q) of positions in ``values``, distinct 64-bit hashes, within ``radius`` bits, each once,
    with their distances. ``band_count`` overrides the choice of ``band_count_choose`` (None there: all
    pairs); tests pin it to exercise every split on small inputs.
    """
    values = np.asarray(values, dtype=np.uint64)
    n = len(values)
    if radius <= 0 or n < 2:  # distinct hashes are at least one bit apart
        return _empty_pairs()
    if band_count is None:
        band_count = band_count_choose(n, radius)
    if band_count is None:
        a, b, d = _all_pairs_within(values, radius)
        return a.astype(np.int64), b.astype(np.int64), d.astype(np.int64)
    if not radius < band_count <= HASH_BITS:
        raise ValueError(f"band_count must be between radius + 1 and {HASH_BITS}, not {band_count}")
    bands = band_split(band_count)
    key_size = band_count - radius
    found_a, found_b, found_d = [], [], []
    for first in range(band_count - key_size + 1):
        combos = [combo for combo in itertools.combinations(range(band_count), key_size) if combo[0] == first]
        # Every pair met by these keys agrees on band ``first``, so it lies within one part cut on that
        # band's top bits. Parts of ~PART_SIZE hashes keep each key's sort and scans inside the CPU cache
        # instead of streaming 80 MB arrays per key at 10M hashes: half the time, same pairs.
        shift, width = bands[first]
        part_bits = min(width, 16, (n // PART_SIZE).bit_length())
        part = ((values >> np.uint64(shift + width - part_bits)) & np.uint64((1 << part_bits) - 1)).astype(
            np.uint16
        )
        by_part = np.argsort(part, kind="stable")  # a radix sort for 16-bit keys: linear
        part_values = values[by_part]
        bounds = np.r_[0, np.cumsum(np.bincount(part, minlength=1 << part_bits))].tolist()
        del part
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            if end - start < 2:
                continue
            for combo in combos:
                a, b, d = _pairs_sharing_key(part_values[start:end], radius, bands, combo)
                found_a.append(by_part[a + start])
                found_b.append(by_part[b + start])
                found_d.append(d)
    if not found_a:
        return _empty_pairs()
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    return (
        np.minimum(a, b).astype(np.int64),
        np.maximum(a, b).astype(np.int64),
        np.concatenate(found_d).astype(np.int64),
    )


def _members_by_value(inverse: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices grouped by distinct value (ascending within a value), and where each value's run starts."""
    members = np.argsort(inverse, kind="stable")
    starts = np.cumsum(counts) - counts
    return members, starts


def near_duplicate_pairs(hashes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All index pairs (i < j) whose 64-bit hashes are within ``radius`` bits, with their distances, sorted
    by (i, j).

    Identical hashes are merged first (blank images share one hash by the hundred thousand), the distinct
    values are searched with ``distinct_hash_pairs``, and each pair of values is expanded back to every
    pair of the images holding them. The output can still be quadratic, when many images share a hash;
    ``near_duplicate_groups`` never expands it.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if len(hashes) < 2:
        return _empty_pairs()
    values, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    p, q, d = distinct_hash_pairs(values, radius)
    members, starts = _members_by_value(inverse, counts)
    found_i, found_j, found_d = [], [], []

    # Between two values: every member of one with every member of the other.
    sizes = counts[p] * counts[q]
    pair_of = np.repeat(np.arange(len(p)), sizes)
    local = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    width = counts[q][pair_of]
    a = members[starts[p][pair_of] + local // width]
    b = members[starts[q][pair_of] + local % width]
    found_i.append(np.minimum(a, b))
    found_j.append(np.maximum(a, b))
    found_d.append(d[pair_of])

    # Within one value: every member with every later member, at distance 0.
    sorted_value = inverse[members]
    same_as_next = np.zeros(len(members), dtype=bool)
    np.equal(sorted_value[1:], sorted_value[:-1], out=same_as_next[:-1])
    active = np.flatnonzero(same_as_next)
    offset = 1
    while active.size:
        found_i.append(members[active])
        found_j.append(members[active + offset])
        found_d.append(np.zeros(len(active), dtype=np.int64))
        active = active[same_as_next[active + offset]]
        offset += 1

    i = np.concatenate(found_i).astype(np.int64)
    j = np.concatenate(found_j).astype(np.int64)
    d = np.concatenate(found_d).astype(np.int64)
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


@dataclass(frozen=True)
class DuplicateMark:
    index: int  # the image marked
    keeper: int  # the index of the image kept for its group
    distance: int  # Hamming distance to the keeper (0 with the same size means the same picture)


def near_duplicate_groups(
    hashes: np.ndarray, areas: np.ndarray, radius: int
) -> tuple[list[DuplicateMark], np.ndarray]:
    """Group images whose hashes chain within ``radius``; keep the highest resolution.

    Returns the marks for every non-kept member (by index) and, for each index, the index of its group's
    keeper (itself when alone). Ties in area keep the lowest index, i.e. the oldest image.

    Groups are the connected components of the pairs, so they are computed on distinct hash values:
    images sharing a hash are one node, and a hash held by 100,000 blank images costs one node instead
    of five billion pairs.
    """
    # Imported here: the web tier imports this module for its constants and should not pay for SciPy.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    keeper = np.arange(n, dtype=np.int64)
    if n < 2:
        return [], keeper
    values, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    p, q, _ = distinct_hash_pairs(values, radius)
    graph = coo_matrix((np.ones(len(p), dtype=np.int8), (p, q)), shape=(len(values), len(values)))
    _, component = connected_components(graph, directed=False)
    linked = counts > 1
    linked[p] = True
    linked[q] = True
    involved = np.flatnonzero(linked[inverse])
    if involved.size == 0:
        return [], keeper
    group = component[inverse[involved]]
    # Within a group: ascending area, then descending index, so the last is the largest and the oldest.
    order = np.lexsort((-involved, np.asarray(areas)[involved], group))
    sorted_group = group[order]
    last = np.r_[sorted_group[1:] != sorted_group[:-1], True]
    keeper_of_group = np.empty(len(values), dtype=np.int64)
    keeper_of_group[sorted_group[last]] = involved[order[last]]
    keeper[involved] = keeper_of_group[group]
    marked = involved[keeper[involved] != involved]
    distance = np.bitwise_count(hashes[marked] ^ hashes[keeper[marked]])
    marks = [
        DuplicateMark(index=index, keeper=kept, distance=dist)
        for index, kept, dist in zip(marked.tolist(), keeper[marked].tolist(), distance.tolist(), strict=True)
    ]
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


# ASCII captions (most of a web pool) take a table lookup instead of a Unicode category per character:
# for ASCII, NFKC is the identity, casefold is lower(), and the categories P, S, Z and C are exactly the
# characters that are neither letters nor digits.
_ASCII_SPACES = bytes(c if chr(c).isalnum() else 32 for c in range(256))


def caption_normalise(text: str) -> str:
    """Case, accents' composition, punctuation and spacing removed: what makes two captions "the same"."""
    if text.isascii():
        return " ".join(text.encode("ascii").lower().translate(_ASCII_SPACES).decode("ascii").split())
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text)
    return " ".join(text.split())


def caption_check(text: str, normalised: str | None = None) -> tuple[str, str]:
    """(status, reason) for one caption's own text: ``empty``, ``trivial`` or ``ok``. ``normalised`` is
    ``caption_normalise(text)`` when the caller has it already."""
    stripped = text.strip()
    if not stripped:
        return "empty", "empty caption"
    if len(stripped) < MIN_CAPTION_CHARS:
        return "trivial", f"shorter than {MIN_CAPTION_CHARS} characters"
    if not any(ch.isalpha() for ch in stripped):
        return "trivial", "no letters (only digits, punctuation or symbols)"
    if _FILE_NAME.match(stripped):
        return "trivial", "looks like a file name"
    if (caption_normalise(stripped) if normalised is None else normalised) in BOILERPLATE:
        return "trivial", f"boilerplate text ({stripped[:40]!r})"
    return "ok", ""
