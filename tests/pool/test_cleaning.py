from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pool.cleaning import (
    band_masks,
    caption_check,
    caption_normalise,
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
