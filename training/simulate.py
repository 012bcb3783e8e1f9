"""Simulated annotators: a hidden preference plus noise, producing judgments in the real format.

Plain Python/numpy, no Django: the ``simulate_annotators`` command feeds these judgments through the
same services real annotators use, and ``benchmarks/active_learning.py`` uses them directly.

The model of an annotator (Bradley-Terry with a temperature, i.e. Plackett-Luce):
each caption has a hidden quality ``q`` in [0, 1]; the annotator perceives ``q + noise * Gumbel``
and ranks by it, so ``P(a ranked above b) = sigmoid((q_a - q_b) / noise)``. Captions whose hidden
qualities are within ``tie_margin`` of each other land in one tier (people tie near-equal captions).
Ratings on the 1-5 scale are ``1 + 4 q`` plus Gaussian noise (``rating_noise``, default twice
``noise`` on the quality scale) and a small fixed per-criterion offset, rounded and clipped.

Judgment format (annotate/models.py): ``ranking`` is a list of tiers of caption ids, best first;
``ratings`` is ``{"<caption id>": {"<criterion>": 1..5}}``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Fallback hidden quality by caption source when no truth file knows the pair (outside the demo):
# a human description is usually best, a terse alt text middling, keyword soup weaker.
SOURCE_QUALITY = {"human": 0.8, "rewrite": 0.75, "model": 0.6, "alt": 0.55, "synthetic": 0.4}


@dataclass(frozen=True)
class CaptionInfo:
    caption_id: int
    text: str
    source: str = ""
    image_key: str = ""  # e.g. the image's sha256, to look the pair up in a truth table


@dataclass
class AnnotatorConfig:
    # Temperature of the Bradley-Terry choice on the quality scale: 0.1 means a quality gap of 0.1
    # is won 73% of the time, a gap of 0.3 95% of the time.
    noise: float = 0.1
    # Hidden qualities closer than this are a tie for this annotator.
    tie_margin: float = 0.02
    # Standard deviation of ratings on the quality scale; None = 2 * noise.
    rating_noise: float | None = None


HiddenPreference = Callable[[CaptionInfo], float]


def source_length_quality(info: CaptionInfo) -> float:
    """Fallback preference: source prior plus a small bonus for more specific (longer) text."""
    base = SOURCE_QUALITY.get(info.source, 0.5)
    words = len(re.findall(r"\w+", info.text))
    return min(1.0, base + min(words, 30) / 300)


def truth_preference(
    quality: Mapping[tuple[str, str], float], fallback: HiddenPreference = source_length_quality
) -> HiddenPreference:
    """Preference from a truth table ``{(image key, caption text): quality}`` (the demo's truth.jsonl,
    see ``pool.demo.demo_truth_load``); pairs it does not know use ``fallback``."""

    def prefer(info: CaptionInfo) -> float:
        value = quality.get((info.image_key, info.text.strip()))
        return float(value) if value is not None else fallback(info)

    return prefer


def linear_preference(weights: np.ndarray, features: Mapping[int, np.ndarray]) -> HiddenPreference:
    """Hidden linear reward over per-caption feature vectors, squashed to [0, 1]."""
    w = np.asarray(weights, dtype=np.float64)

    def prefer(info: CaptionInfo) -> float:
        return float(1.0 / (1.0 + math.exp(-float(np.dot(features[info.caption_id], w)))))

    return prefer


def ranking_sample(
    qualities: Sequence[float], caption_ids: Sequence[int], config: AnnotatorConfig, rng: np.random.Generator
) -> list[list[int]]:
    """One noisy ranking (tiers of caption ids, best first) of captions with these hidden qualities."""
    q = np.asarray(qualities, dtype=np.float64)
    perceived = q + config.noise * rng.gumbel(size=len(q)) if config.noise > 0 else q.copy()
    order = [int(i) for i in np.argsort(-perceived, kind="stable")]
    tiers: list[list[int]] = []
    previous: int | None = None
    for idx in order:
        if previous is not None and abs(q[idx] - q[previous]) < config.tie_margin:
            tiers[-1].append(int(caption_ids[idx]))
        else:
            tiers.append([int(caption_ids[idx])])
        previous = idx
    return tiers


def ratings_sample(
    qualities: Sequence[float],
    caption_ids: Sequence[int],
    criteria: Sequence[str],
    config: AnnotatorConfig,
    rng: np.random.Generator,
) -> dict[str, dict[str, int]]:
    sigma = config.rating_noise if config.rating_noise is not None else 2 * config.noise
    out: dict[str, dict[str, int]] = {}
    for q, cid in zip(qualities, caption_ids, strict=True):
        per: dict[str, int] = {}
        for index, key in enumerate(criteria):
            # Criteria are correlated with overall quality but not identical: a fixed small offset
            # per criterion keeps the per-criterion heads from learning one number four times.
            offset = 0.08 * ((index % 3) - 1)
            value = 1.0 + 4.0 * float(np.clip(q + offset + sigma * rng.standard_normal(), 0.0, 1.0))
            per[key] = int(min(5, max(1, round(value))))
        out[str(cid)] = per
    return out


def judgment_simulate(
    *,
    captions: Sequence[CaptionInfo],
    criteria: Sequence[str],
    preference: HiddenPreference,
    config: AnnotatorConfig,
    rng: np.random.Generator,
) -> tuple[list[list[int]], dict[str, dict[str, int]]]:
    """``(ranking, ratings)`` of one simulated annotator for one task."""
    if not captions:
        raise ValueError("a task without captions cannot be judged")
    qualities = [preference(c) for c in captions]
    ids = [c.caption_id for c in captions]
    return ranking_sample(qualities, ids, config, rng), ratings_sample(qualities, ids, criteria, config, rng)


def pairwise_accuracy(
    predicted: Sequence[float], hidden: Sequence[float], groups: Sequence[int], min_gap: float = 0.0
) -> float:
    """Share of same-group caption pairs (hidden gap > ``min_gap``) that ``predicted`` orders like
    ``hidden``: the held-out accuracy the benchmark reports. Predicted ties count as half."""
    p = np.asarray(predicted, dtype=np.float64)
    h = np.asarray(hidden, dtype=np.float64)
    g = np.asarray(groups)
    right = total = 0.0
    for group in np.unique(g):
        idx = np.flatnonzero(g == group)
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                i, j = idx[a], idx[b]
                gap = h[i] - h[j]
                if abs(gap) <= min_gap:
                    continue
                total += 1
                d = p[i] - p[j]
                right += 0.5 if d == 0 else float(np.sign(d) == np.sign(gap))
    return right / total if total else float("nan")
