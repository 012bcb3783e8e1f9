#!/usr/bin/env python
"""Benchmark of the near-duplicate search (``pool.cleaning``) at 100k, 1M and 10M hashes, radius 6.

Data (same seed, same hashes for every implementation of one size): random 64-bit hashes, of which
1% are replaced by near copies of other hashes (1 to 6 bits flipped, so every planted pair is within the
radius), plus exact-duplicate clusters: five clusters of 0.02% of n each holding one random hash, and
one "blank image" cluster of 0.1% of n at hash 0. Areas are random, so keepers depend on them.

Measured, each in a fresh child process so that its peak RSS (``ru_maxrss``) is its own, as wall time and
the process's CPU time (on shared cores the wall time mostly says how busy the neighbours were):

- **new groups**: ``near_duplicate_groups`` (what ``pool_clean`` runs), at every size;
- **baseline groups**: the implementation this replaced (copied below: ``radius + 1`` bands of ~9 bits,
  a block of XORs per bucket, ``np.unique`` of every pair found, a Python union-find), at 100k and 1M
  only: its work is the sum of squared bucket sizes, n^2 / 73, so hours at 10M;
- **new pairs**: ``near_duplicate_pairs`` at 100k and 1M (at 10M the blank cluster alone is 50M pairs,
  which says more about the output than the search).

SciPy (imported lazily by ``near_duplicate_groups``) is imported before the clock starts.
Every child prints a digest of its result (marks and keepers, or pairs); the parent checks that the
new code's digest equals the baseline's. Prints a Markdown table.

    nice -n 10 python benchmarks/near_duplicates.py [--sizes 100000 1000000 10000000]
        [--baseline-up-to 1000000] [--radius 6]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pool import cleaning  # noqa: E402 - needs the repository on sys.path

PLANTED_SHARE = 0.01
CLUSTER_COUNT = 5
CLUSTER_SHARE = 0.0002
BLANK_SHARE = 0.001


# --- the implementation this replaced, kept as the baseline -----------------------------------------

BASELINE_BLOCK = 2048


class BaselineUnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(i, i) != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def baseline_near_duplicate_pairs(
    hashes: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found_i, found_j, found_d = [], [], []
    if n < 2:
        empty = np.array([], dtype=np.int64)
        return empty, empty, empty
    for shift, width in cleaning.band_masks(radius):
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
            for block_start in range(0, len(members), BASELINE_BLOCK):
                block = member_hashes[block_start : block_start + BASELINE_BLOCK]
                distance = np.bitwise_count(block[:, None] ^ member_hashes[None, :])
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
    pairs = np.unique(np.stack([i, j, d], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1], pairs[:, 2]


def baseline_near_duplicate_groups(
    hashes: np.ndarray, areas: np.ndarray, radius: int
) -> tuple[list[cleaning.DuplicateMark], np.ndarray]:
    n = len(hashes)
    i, j, _ = baseline_near_duplicate_pairs(hashes, radius)
    groups = BaselineUnionFind()
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
            distance = int(np.bitwise_count(hashes[index] ^ hashes[kept]))
            marks.append(cleaning.DuplicateMark(index=index, keeper=kept, distance=distance))
    return marks, keeper


# --- data and measurements ---------------------------------------------------------------------------


def hashes_with_near_duplicates(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, areas): random hashes, 1% near copies (1-6 bits off), exact clusters and a blank one."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    planted = rng.choice(n, size=int(n * PLANTED_SHARE), replace=False)
    originals = rng.integers(0, n, size=len(planted))
    flips = rng.integers(1, 7, size=len(planted))
    # Distinct bit positions per copy: the first ``flips`` columns of a random permutation of 0..63.
    positions = np.argsort(rng.random((len(planted), cleaning.HASH_BITS), dtype=np.float32), axis=1)[:, :6]
    bits = np.uint64(1) << positions.astype(np.uint64)
    bits[np.arange(6)[None, :] >= flips[:, None]] = 0
    hashes[planted] = hashes[originals] ^ np.bitwise_or.reduce(bits, axis=1)
    cluster_size = max(2, int(n * CLUSTER_SHARE))
    for _ in range(CLUSTER_COUNT):
        hashes[rng.choice(n, size=cluster_size, replace=False)] = hashes[int(rng.integers(0, n))]
    hashes[rng.choice(n, size=max(2, int(n * BLANK_SHARE)), replace=False)] = 0
    areas = rng.integers(32, 1024, size=n) * rng.integers(32, 1024, size=n)
    return hashes, areas


def digest(*arrays: np.ndarray) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return sha.hexdigest()[:16]


def measure(kind: str, n: int, radius: int) -> dict:
    """One measurement, run in this (child) process."""
    hashes, areas = hashes_with_near_duplicates(n)
    # Imported before the clock starts, as a worker that has cleaned once has it: about 1.5 s here.
    import scipy.sparse.csgraph  # noqa: F401

    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu_start = time.perf_counter(), time.process_time()
    if kind == "pairs":
        i, j, d = cleaning.near_duplicate_pairs(hashes, radius)
        result = {"digest": digest(i, j, d), "pairs": len(i)}
    else:
        groups = cleaning.near_duplicate_groups if kind == "groups" else baseline_near_duplicate_groups
        marks, keeper = groups(hashes, areas, radius)
        flat = np.array([(m.index, m.keeper, m.distance) for m in marks], dtype=np.int64).reshape(-1, 3)
        result = {"digest": digest(flat, keeper), "marks": len(marks)}
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "kind": kind,
        "n": n,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mb": peak_kb / 1024,
        "data_mb": rss_before_kb / 1024,
    } | result


def measure_in_child(kind: str, n: int, radius: int) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--sizes", str(n), "--radius", str(radius)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    print(
        f"  {kind:15s} n={n:>10,}  {result['seconds']:8.1f} s (CPU {result['cpu_seconds']:.1f} s)"
        f"  peak {result['peak_mb']:7.0f} MB",
        flush=True,
    )
    return result


def timing(result: dict) -> str:
    digits = 1 if result["cpu_seconds"] >= 1 else 2
    return f"{result['seconds']:.{digits}f} s ({result['cpu_seconds']:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument(
        "--baseline-up-to", type=int, default=1_000_000, help="largest size the baseline runs at"
    )
    parser.add_argument("--pairs-up-to", type=int, default=1_000_000, help="largest size pairs are timed at")
    parser.add_argument("--radius", type=int, default=6)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.sizes[0], args.radius)))
        return

    print(
        f"radius {args.radius}, {platform.processor() or platform.machine()}, started {time.strftime('%Y-%m-%d %H:%M')}"
    )
    rows = []
    for n in args.sizes:
        new = measure_in_child("groups", n, args.radius)
        old = measure_in_child("baseline-groups", n, args.radius) if n <= args.baseline_up_to else None
        pairs = measure_in_child("pairs", n, args.radius) if n <= args.pairs_up_to else None
        if old is not None and old["digest"] != new["digest"]:
            raise SystemExit(
                f"n={n}: new groups differ from the baseline's ({new['digest']} != {old['digest']})"
            )
        rows.append((n, new, old, pairs))

    print()
    print("Wall time, with the process's CPU time in brackets (the cores are shared). Peak RSS of each child")
    print("process, with its RSS before the call in brackets (interpreter, NumPy, SciPy, the data).")
    print()
    header = "| hashes | bands | new groups | peak RSS | baseline groups | peak RSS | speed-up | new pairs |"
    print(header)
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, new, old, pairs in rows:
        bands = cleaning.band_count_choose(n, args.radius)  # on n: distinct hashes are ~1% fewer
        memory = f"{new['peak_mb']:.0f} MB ({new['data_mb']:.0f})"
        old_cells = "not run | | "
        if old:
            speed_up = (
                f"{old['seconds'] / new['seconds']:.0f}x ({old['cpu_seconds'] / new['cpu_seconds']:.0f}x)"
            )
            old_cells = f"{timing(old)} | {old['peak_mb']:.0f} MB ({old['data_mb']:.0f}) | {speed_up}"
        pair_cell = f"{timing(pairs)}, {pairs['pairs']:,} pairs" if pairs else "not run"
        print(f"| {n:,} | {bands} | {timing(new)} | {memory} | {old_cells} | {pair_cell} |")
    for (n0, new0, *_), (n1, new1, *_) in zip(rows, rows[1:], strict=False):
        wall, cpu = new1["seconds"] / new0["seconds"], new1["cpu_seconds"] / new0["cpu_seconds"]
        print(f"new groups, {n0:,} -> {n1:,} hashes ({n1 / n0:.0f}x): wall x{wall:.1f}, CPU x{cpu:.1f}")


if __name__ == "__main__":
    main()
