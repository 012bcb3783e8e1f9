"""Judgments -> weighted preference pairs and rating targets. Pure Python/NumPy, no Django.

A ranking is a list of tiers, best first (``[[12], [7, 9], [3]]`` means 12 > 7 = 9 > 3). It becomes all
k(k-1)/2 unordered pairs, each oriented so ``a`` is from the better (or the same) tier: target 1.0 when
``a`` was ranked above ``b``, 0.5 when they are tied (PickScore's and HPSv2's soft label for ties).

Weights (ImageReward's per-prompt normalisation): in ``each`` mode every judgment's pairs sum to one, so
a task with 6 captions (15 pairs) counts as much as one with 3 (3 pairs) and each annotator counts; in
``consensus`` mode the annotators of a task are first merged (the target of a pair is the mean of their
targets, so 2 of 3 saying a > b gives 0.67) and each task's pairs sum to one.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

CONSENSUS_MODES = ("each", "consensus")


@dataclass(frozen=True)
class JudgmentRecord:
    """One annotator's judgment of one task, as plain values."""

    task_id: int
    user_id: int
    ranking: Sequence[Sequence[int]]
    ratings: dict = field(default_factory=dict)  # {caption id (int or str): {criterion: 1..5}}
    image_key: str = ""  # the image's sha256: the unit of the train/validation/test split


@dataclass(frozen=True)
class Pair:
    task_id: int
    a: int
    b: int
    target: float  # P(a preferred over b): 1.0 ranked above, 0.5 tied, in between for a consensus
    weight: float
    image_key: str = ""


def _check_tiers(tiers: Sequence[Sequence[int]]) -> list[list[int]]:
    clean = [[int(c) for c in tier] for tier in tiers]
    flat = [c for tier in clean for c in tier]
    if len(flat) != len(set(flat)):
        raise ValueError(f"ranking {list(map(list, tiers))} lists a caption more than once")
    if any(not tier for tier in clean):
        raise ValueError(f"ranking {list(map(list, tiers))} has an empty tier")
    return clean


def pairs_from_ranking(tiers: Sequence[Sequence[int]]) -> list[tuple[int, int, float]]:
    """All k(k-1)/2 pairs of a ranking as ``(a, b, target)``; ``a`` never ranks below ``b``."""
    clean = _check_tiers(tiers)
    pairs: list[tuple[int, int, float]] = []
    for i, tier in enumerate(clean):
        for x in range(len(tier)):
            for y in range(x + 1, len(tier)):
                pairs.append((tier[x], tier[y], 0.5))
        for lower in clean[i + 1 :]:
            for a in tier:
                for b in lower:
                    pairs.append((a, b, 1.0))
    return pairs


def _pair_targets(tiers: Sequence[Sequence[int]]) -> dict[tuple[int, int], float]:
    """Targets keyed by (smaller id, larger id), as P(smaller id preferred)."""
    out = {}
    for a, b, target in pairs_from_ranking(tiers):
        out[(a, b) if a < b else (b, a)] = target if a < b else 1.0 - target
    return out


def pairs_weighted(judgments: Iterable[JudgmentRecord], mode: str = "each") -> list[Pair]:
    """Weighted pairs of many judgments: each judgment's (``each``) or task's (``consensus``) sum to 1."""
    if mode not in CONSENSUS_MODES:
        raise ValueError(f"consensus mode {mode!r} is not one of {', '.join(CONSENSUS_MODES)}")
    judgments = list(judgments)
    pairs: list[Pair] = []
    if mode == "each":
        for j in judgments:
            raw = pairs_from_ranking(j.ranking)
            for a, b, target in raw:
                pairs.append(Pair(j.task_id, a, b, target, 1.0 / len(raw), j.image_key))
        return pairs
    by_task: dict[int, list[JudgmentRecord]] = defaultdict(list)
    for j in judgments:
        by_task[j.task_id].append(j)
    for task_id, group in by_task.items():
        sums: dict[tuple[int, int], list[float]] = defaultdict(list)
        for j in group:
            for key, target in _pair_targets(j.ranking).items():
                sums[key].append(target)
        if not sums:
            continue
        for (a, b), targets in sorted(sums.items()):
            mean = float(np.mean(targets))
            # Orient the merged pair like single judgments: the (consensus) preferred caption first.
            if mean < 0.5:
                a, b, mean = b, a, 1.0 - mean
            pairs.append(Pair(task_id, a, b, mean, 1.0 / len(sums), group[0].image_key))
    return pairs


def rating_targets(judgments: Iterable[JudgmentRecord], criteria: Sequence[str]) -> dict[int, np.ndarray]:
    """Mean 1-5 rating per caption and criterion (NaN where nobody rated it)."""
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, np.ndarray] = {}
    for j in judgments:
        for caption_id, per_criterion in (j.ratings or {}).items():
            cid = int(caption_id)
            if cid not in sums:
                sums[cid] = np.zeros(len(criteria))
                counts[cid] = np.zeros(len(criteria))
            for c, key in enumerate(criteria):
                value = (per_criterion or {}).get(key)
                if value is None:
                    continue
                value = float(value)
                if not 1.0 <= value <= 5.0:
                    raise ValueError(
                        f"rating {value} of caption {cid} for {key!r} in task {j.task_id} is outside 1-5"
                    )
                sums[cid][c] += value
                counts[cid][c] += 1
    out = {}
    for cid, total in sums.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            out[cid] = np.where(counts[cid] > 0, total / np.maximum(counts[cid], 1), np.nan)
    return out


def human_agreement(judgments: Iterable[JudgmentRecord]) -> tuple[float, int]:
    """The human ceiling: how often one annotator agrees with the consensus of the others.

    For every task with at least two judgments, every annotator and every pair the annotator did not
    tie: the others' mean target decides the consensus; pairs where the others are split evenly are
    left out (as ties are left out of the model's accuracy). Returns (agreement, pairs counted).
    """
    by_task: dict[int, list[JudgmentRecord]] = defaultdict(list)
    for j in judgments:
        by_task[j.task_id].append(j)
    agree = total = 0
    for group in by_task.values():
        if len(group) < 2:
            continue
        targets = [_pair_targets(j.ranking) for j in group]
        for i, mine in enumerate(targets):
            others = targets[:i] + targets[i + 1 :]
            for key, target in mine.items():
                if target == 0.5:
                    continue
                values = [o[key] for o in others if key in o]
                if not values:
                    continue
                consensus = float(np.mean(values))
                if consensus == 0.5:
                    continue
                total += 1
                agree += (target > 0.5) == (consensus > 0.5)
    return (agree / total if total else float("nan")), total


@dataclass
class PairSet:
    """Pairs and rating targets of one split, as indices into the feature rows of TrainingData."""

    a: np.ndarray  # int64 [P] row of the preferred (or tied) caption
    b: np.ndarray  # int64 [P]
    target: np.ndarray  # float32 [P]
    weight: np.ndarray  # float32 [P]
    rated_rows: np.ndarray  # int64 [R] rows with rating targets
    ratings: np.ndarray  # float32 [R, C], NaN where missing

    @property
    def n_pairs(self) -> int:
        return int(len(self.a))

    @classmethod
    def empty(cls, n_criteria: int) -> PairSet:
        return cls(
            a=np.zeros(0, np.int64),
            b=np.zeros(0, np.int64),
            target=np.zeros(0, np.float32),
            weight=np.zeros(0, np.float32),
            rated_rows=np.zeros(0, np.int64),
            ratings=np.zeros((0, n_criteria), np.float32),
        )


def pairset_build(
    pairs: Sequence[Pair], ratings: dict[int, np.ndarray], row_of: dict[int, int], n_criteria: int
) -> PairSet:
    """Map caption ids to feature rows; a pair or rating whose caption has no row is an error."""
    missing = sorted({c for p in pairs for c in (p.a, p.b) if c not in row_of})
    if missing:
        raise ValueError(f"captions {missing[:10]} have no features (of {len(missing)} missing)")
    rated = sorted(cid for cid in ratings if cid in row_of)
    return PairSet(
        a=np.array([row_of[p.a] for p in pairs], np.int64),
        b=np.array([row_of[p.b] for p in pairs], np.int64),
        target=np.array([p.target for p in pairs], np.float32),
        weight=np.array([p.weight for p in pairs], np.float32),
        rated_rows=np.array([row_of[c] for c in rated], np.int64),
        ratings=(
            np.stack([ratings[c] for c in rated]).astype(np.float32)
            if rated
            else np.zeros((0, n_criteria), np.float32)
        ),
    )


@dataclass
class TrainingData:
    """Everything ``train`` needs: one feature row per caption plus pairs/ratings per split.

    ``image_feats`` holds one row per distinct image and ``image_of_row`` maps each caption row to it,
    so the image half of the first layer is computed once per image, not once per caption.
    """

    image_feats: np.ndarray  # float32 [I, Fi]
    text_feats: np.ndarray  # float32 [M, Ft]
    image_of_row: np.ndarray  # int64 [M]
    embed_dim: int
    criteria: list[str]
    train: PairSet
    validation: PairSet | None = None
    test: PairSet | None = None
    encoder: str = ""
    caption_ids: list[int] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row (image, text) features, e.g. for the model's plain forward."""
        return self.image_feats[self.image_of_row[rows]], self.text_feats[rows]


SPLITS = ("train", "validation", "test")


def image_split(image_key: str, validation_fraction: float = 0.1, test_fraction: float = 0.2) -> str:
    """Which split an image belongs to, from a hash of its key (sha256): stable across runs and
    machines, and whole images move together, so no image's captions leak across splits."""
    bucket = int(hashlib.sha256(f"loupe-split:{image_key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + validation_fraction:
        return "validation"
    return "train"


def training_data_build(
    *,
    judgments: Sequence[JudgmentRecord],
    caption_ids: Sequence[int],
    row_image_keys: Sequence[str],
    image_feats: np.ndarray,
    text_feats: np.ndarray,
    embed_dim: int,
    criteria: Sequence[str],
    mode: str = "each",
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    encoder: str = "",
) -> TrainingData:
    """Pairs and ratings per split over feature rows (one per caption, ``image_feats`` per row)."""
    if not (len(caption_ids) == len(row_image_keys) == len(image_feats) == len(text_feats)):
        raise ValueError("caption_ids, row_image_keys, image_feats and text_feats must have one row each")
    row_of = {int(c): i for i, c in enumerate(caption_ids)}
    image_index: dict[str, int] = {}
    first_row: list[int] = []
    image_of_row = np.empty(len(caption_ids), np.int64)
    for i, key in enumerate(row_image_keys):
        if key not in image_index:
            image_index[key] = len(first_row)
            first_row.append(i)
        image_of_row[i] = image_index[key]
    by_split: dict[str, list[JudgmentRecord]] = {s: [] for s in SPLITS}
    for j in judgments:
        by_split[image_split(j.image_key, validation_fraction, test_fraction)].append(j)
    sets = {}
    for split, group in by_split.items():
        pairs = pairs_weighted(group, mode)
        ratings = rating_targets(group, criteria)
        sets[split] = pairset_build(pairs, ratings, row_of, len(criteria))
    return TrainingData(
        image_feats=np.ascontiguousarray(np.asarray(image_feats, np.float32)[first_row]),
        text_feats=np.ascontiguousarray(np.asarray(text_feats, np.float32)),
        image_of_row=image_of_row,
        embed_dim=int(embed_dim),
        criteria=list(criteria),
        train=sets["train"],
        validation=sets["validation"],
        test=sets["test"],
        encoder=encoder,
        caption_ids=[int(c) for c in caption_ids],
        info={
            "judgments": {s: len(g) for s, g in by_split.items()},
            "images": {s: len({j.image_key for j in g}) for s, g in by_split.items()},
            "mode": mode,
        },
    )
