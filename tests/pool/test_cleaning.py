from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.near_duplicates import baseline_near_duplicate_groups, hashes_with_near_duplicates
from pool import cleaning
from pool.cleaning import (
    LARGE_BUCKET,
    band_count_choose,
    band_masks,
    caption_check,
    caption_normalise,
    distinct_hash_pairs,
    near_duplicate_groups,
    near_duplicate_pairs,
)


def brute_force_pairs(hashes: np.ndarray, radius: int) -> set[tuple[int, int, int]]:
    found = set()
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            distance = bin(int(hashes[i]) ^ int(hashes[j])).count("1")
            if distance <= radius:
                found.add((i, j, distance))
    return found


def clustered_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random hashes plus copies with a few flipped bits, so there are pairs at every distance."""
    base = rng.integers(0, 2**63, size=n // 2, dtype=np.uint64) * np.uint64(2) + rng.integers(
        0, 2, size=n // 2, dtype=np.uint64
    )
    copies = base.copy()
    for k in range(len(copies)):
        for bit in rng.choice(64, size=int(rng.integers(0, 10)), replace=False):
            copies[k] ^= np.uint64(1) << np.uint64(int(bit))
    return np.concatenate([base, copies])


@pytest.mark.parametrize("radius", [0, 1, 3, 6, 10])
def test_multi_index_hashing_finds_exactly_the_brute_force_pairs(radius):
    hashes = clustered_hashes(np.random.default_rng(radius), 300)
    i, j, d = near_duplicate_pairs(hashes, radius)
    assert set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == brute_force_pairs(hashes, radius)


@settings(max_examples=40, deadline=None)
@given(radius=st.integers(0, 12), seed=st.integers(0, 10_000))
def test_band_split_covers_64_bits_in_radius_plus_one_bands(radius, seed):
    bands = band_masks(radius)
    assert len(bands) == radius + 1
    assert sum(width for _, width in bands) == 64
    assert [shift for shift, _ in bands] == [sum(w for _, w in bands[:k]) for k in range(len(bands))]


def test_groups_are_transitive_and_keep_the_largest_image():
    # 0 and 1 differ by 4 bits, 1 and 2 by 4 bits, 0 and 2 by 8: one group through 1.
    hashes = np.array([0b0, 0b1111, 0b11111111, 0xFFFFFFFF00000000], dtype=np.uint64)
    areas = np.array([100, 50, 400, 1000])
    marks, keeper = near_duplicate_groups(hashes, areas, radius=4)
    assert sorted((m.index, m.keeper) for m in marks) == [(0, 2), (1, 2)]
    assert keeper.tolist() == [2, 2, 2, 3]


def test_equal_areas_keep_the_oldest():
    marks, keeper = near_duplicate_groups(np.array([5, 5], dtype=np.uint64), np.array([10, 10]), radius=2)
    assert [(m.index, m.keeper, m.distance) for m in marks] == [(1, 0, 0)]


def matrix_pairs(hashes: np.ndarray, radius: int) -> set[tuple[int, int, int]]:
    """Brute force as one distance matrix: fine up to a few thousand hashes."""
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(distance <= radius, k=1))
    return set(zip(i.tolist(), j.tolist(), distance[i, j].tolist(), strict=True))


def planted_hashes(rng: np.random.Generator, n: int, max_flips: int) -> np.ndarray:
    """Random hashes, a third of them replaced by copies of others with 0 to ``max_flips`` bits flipped
    (0: exact duplicates), and a cluster of blank (all-zero) hashes."""
    hashes = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    for k in rng.choice(n, size=n // 3, replace=False).tolist():
        copy = hashes[int(rng.integers(0, n))]
        for bit in rng.choice(64, size=int(rng.integers(0, max_flips + 1)), replace=False).tolist():
            copy ^= np.uint64(1) << np.uint64(bit)
        hashes[k] = copy
    hashes[rng.choice(n, size=n // 20, replace=False)] = 0
    return hashes


@pytest.mark.parametrize("radius", [0, 1, 3, 6, 10])
def test_pairs_equal_brute_force_with_planted_near_duplicates(radius):
    hashes = planted_hashes(np.random.default_rng(100 + radius), 1500, max_flips=radius + 2)
    i, j, d = near_duplicate_pairs(hashes, radius)
    found = list(zip(i.tolist(), j.tolist(), d.tolist(), strict=True))
    assert found == sorted(matrix_pairs(hashes, radius))


@pytest.mark.parametrize("radius", [1, 3, 6, 10])
def test_every_band_count_finds_each_pair_of_distinct_hashes_once(radius):
    # Pinned band counts: on inputs this small the cost model would compare all pairs instead.
    values = np.unique(planted_hashes(np.random.default_rng(radius), 1200, max_flips=radius + 2))
    expected = matrix_pairs(values, radius)
    for band_count in range(radius + 1, radius + 5):
        p, q, d = distinct_hash_pairs(values, radius, band_count=band_count)
        found = list(zip(p.tolist(), q.tolist(), d.tolist(), strict=True))
        assert len(found) == len(set(found)), f"{band_count} bands: a pair found twice"
        assert set(found) == expected, f"{band_count} bands"


@settings(max_examples=60, deadline=None)
@given(
    radius=st.integers(1, 8),
    extra_bands=st.integers(1, 3),
    bits=st.lists(st.integers(0, 63), min_size=1, max_size=10, unique=True),
    masks=st.lists(st.integers(0, 2**10 - 1), min_size=2, max_size=80),
)
def test_distinct_pairs_on_hashes_sharing_most_bits(radius, extra_bands, bits, masks):
    # Hashes that differ only on a handful of bit positions agree on most bands: every key meets them,
    # so each pair must still come out of exactly one key.
    values = np.unique(
        np.array(
            [sum(1 << bit for k, bit in enumerate(bits) if mask >> k & 1) for mask in masks], dtype=np.uint64
        )
    )
    p, q, d = distinct_hash_pairs(values, radius, band_count=radius + extra_bands)
    found = list(zip(p.tolist(), q.tolist(), d.tolist(), strict=True))
    assert len(found) == len(set(found))
    assert set(found) == matrix_pairs(values, radius)


@pytest.mark.parametrize("radius", [1, 3, 6])
def test_searching_part_by_part_finds_every_pair_once(radius, monkeypatch):
    # Parts of ~40 hashes instead of 32k: many parts per first band on an input a matrix can check.
    monkeypatch.setattr(cleaning, "PART_SIZE", 40)
    values = np.unique(planted_hashes(np.random.default_rng(radius), 3000, max_flips=radius + 2))
    expected = matrix_pairs(values, radius)
    for band_count in (radius + 1, radius + 2, radius + 3):
        p, q, d = distinct_hash_pairs(values, radius, band_count=band_count)
        found = list(zip(p.tolist(), q.tolist(), d.tolist(), strict=True))
        assert len(found) == len(set(found)), f"{band_count} bands: a pair found twice"
        assert set(found) == expected, f"{band_count} bands"


@pytest.mark.parametrize(("radius", "band_count"), [(1, 8), (2, 10)])
def test_a_key_shortened_to_fit_the_index_still_finds_each_pair_once(radius, band_count):
    # 7 or 8 bands of 8 bits and 11 bits of index do not fit in 64: the key drops its last bits, so
    # sharing a key no longer means agreeing on all its bands.
    values = np.unique(planted_hashes(np.random.default_rng(3), 2500, max_flips=radius + 1))
    p, q, d = distinct_hash_pairs(values, radius, band_count=band_count)
    found = list(zip(p.tolist(), q.tolist(), d.tolist(), strict=True))
    assert len(found) == len(set(found))
    assert set(found) == matrix_pairs(values, radius)


def test_a_bucket_larger_than_the_offset_passes_is_compared_in_blocks():
    # 1,000 distinct hashes that differ only in their 20 low bits: every key built from the other bands
    # is a single bucket of all of them.
    rng = np.random.default_rng(7)
    values = np.unique(rng.integers(0, 2**20, size=1000, dtype=np.uint64) | np.uint64(0xABCD << 48))
    assert len(values) > 2 * LARGE_BUCKET
    p, q, d = distinct_hash_pairs(values, 6, band_count=8)
    found = list(zip(p.tolist(), q.tolist(), d.tolist(), strict=True))
    assert len(found) == len(set(found))
    assert set(found) == matrix_pairs(values, 6)


@pytest.mark.timeout(60)
def test_ten_thousand_identical_hashes_group_fast_without_expanding_pairs():
    # 10,000 blank images are 50 million pairs: the old search expanded and deduplicated them all
    # (minutes); grouping on distinct hash values sees one node.
    rng = np.random.default_rng(11)
    blanks = np.zeros(10_000, dtype=np.uint64)
    near_blank = np.array([(1 << (k % 60)) | (1 << (k % 60 + 3)) for k in range(200)], dtype=np.uint64)
    others = rng.integers(2**40, np.iinfo(np.uint64).max, size=5_000, dtype=np.uint64)
    hashes = np.concatenate([blanks, near_blank, others])
    rng.shuffle(hashes)
    areas = rng.integers(100, 10_000, size=len(hashes))
    blank_like = np.bitwise_count(hashes) <= 2
    chosen = int(np.flatnonzero(blank_like)[123])
    areas[chosen] = 10**9
    isolated = matrix_pairs(np.unique(others), 6) == set() and (np.bitwise_count(others) > 8).all()
    assert isolated, "the random hashes happened to fall within the radius: pick another seed"

    marks, keeper = near_duplicate_groups(hashes, areas, radius=6)

    assert (keeper[blank_like] == chosen).all()
    assert (keeper[~blank_like] == np.flatnonzero(~blank_like)).all()
    assert [m.index for m in marks] == [int(k) for k in np.flatnonzero(blank_like) if k != chosen]
    assert all(m.distance == int(np.bitwise_count(hashes[m.index])) for m in marks)


def test_pairs_expand_a_cluster_of_identical_hashes_to_every_pair():
    hashes = np.array([9, 0, 0, 1, 0, 9, 3], dtype=np.uint64)
    i, j, d = near_duplicate_pairs(hashes, 1)
    assert list(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == sorted(matrix_pairs(hashes, 1))
    assert (1, 2, 0) in set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True))


def test_groups_equal_the_previous_implementation_on_20k_hashes():
    hashes, areas = hashes_with_near_duplicates(20_000, seed=5)
    marks, keeper = near_duplicate_groups(hashes, areas, radius=6)
    old_marks, old_keeper = baseline_near_duplicate_groups(hashes, areas, radius=6)
    assert len(marks) > 200
    assert marks == old_marks
    assert keeper.tolist() == old_keeper.tolist()


@pytest.mark.parametrize("radius", [0, 2, 6])
def test_groups_equal_the_previous_implementation_with_ties_in_area(radius):
    hashes = planted_hashes(np.random.default_rng(radius), 3000, max_flips=radius + 1)
    areas = np.random.default_rng(0).integers(1, 4, size=len(hashes))  # many ties: the oldest must win
    marks, keeper = near_duplicate_groups(hashes, areas, radius)
    old_marks, old_keeper = baseline_near_duplicate_groups(hashes, areas, radius)
    assert marks == old_marks
    assert keeper.tolist() == old_keeper.tolist()


def test_band_count_grows_with_the_pool_and_large_radii_compare_all_pairs():
    assert band_count_choose(100_000, 6) == 8
    assert band_count_choose(10_000_000, 6) == 9
    assert band_count_choose(10_000_000, 1) == 2
    assert band_count_choose(1_000_000, 32) is None


def test_no_pairs_for_fewer_than_two_hashes():
    for hashes in (np.array([], dtype=np.uint64), np.array([7], dtype=np.uint64)):
        assert all(len(part) == 0 for part in near_duplicate_pairs(hashes, 6))
        marks, keeper = near_duplicate_groups(hashes, np.ones(len(hashes)), 6)
        assert marks == [] and keeper.tolist() == list(range(len(hashes)))


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ok", "trivial"),
        ("12345", "trivial"),
        ("!!! ???", "trivial"),
        ("IMG_1234.JPG", "trivial"),
        ("DSC0042", "trivial"),
        ("my holiday photo.png", "trivial"),
        ("Untitled", "trivial"),
        ("image", "trivial"),
        ("No Title.", "trivial"),
        ("A dog", "ok"),
        ("Red bicycle leaning on a wall", "ok"),
        ("Photo of a cat", "ok"),
        ("日本の桜", "ok"),
    ],
)
def test_caption_check(text, status):
    assert caption_check(text)[0] == status


def test_normalising_ignores_case_punctuation_and_spacing():
    assert caption_normalise("  A red  Bicycle!! ") == caption_normalise("a red bicycle") == "a red bicycle"
    assert caption_normalise("ﬁne") == "fine"
