"""Active-learning selection: which annotation tasks should people judge next.

Plain numpy, no Django. Every strategy turns per-task model outputs into a score in [0, 1] where 1
means "most worth a human judgment"; ``priorities_mix`` blends them into task priorities following a
campaign's ``selection_mix``.

A task is one image with its n captions. Inputs are padded to the largest n with NaN, so a pool of
tasks with 3 and 4 captions is one array and every strategy is vectorised over tasks:

- ``member_rewards`` [T, E, n]: each ensemble member's reward for each caption,
- ``rewards`` [T, n]: the ensemble mean (a Bradley-Terry utility: only differences mean anything),
- ``clipscores`` [T, n]: the zero-shot baseline,
- ``embeddings`` [T, D]: one image embedding per task (for diversity).

Strategies (keys of a selection mix):

- ``uncertainty``: ensemble disagreement about the order of the captions: for each caption pair, the
  share of members that order it against the majority (0 .. 0.5), doubled and averaged over pairs.
- ``margin``: the Bradley-Terry probability that the top caption beats the runner-up is near 0.5:
  ``1 - |2p - 1|``.
- ``disagreement``: the reward's order contradicts CLIPScore's: ``(1 - Kendall tau) / 2``.
- ``diversity``: greedy k-center on image embeddings; the chosen centres come first, in the order
  picked, so a batch covers the space instead of twenty near-identical images.
- ``random``: seeded uniform scores, for exploration and for an unbiased sample to evaluate on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

STRATEGIES = ("uncertainty", "margin", "disagreement", "diversity", "random")
MODEL_STRATEGIES = ("uncertainty", "margin", "disagreement")

# The default mix. benchmarks/active_learning.py (docs/loop.md, "Benchmark"): on a learnable pool it was
# the best of the strategies tried (73% of random's labels to reach random's final accuracy; the 60%
# target was not met); with a weak model (the offline encoder on the demo pool) model-based picks do
# worse than random, which is why a fifth stays random and a fifth goes to diversity.
DEFAULT_MIX: dict[str, float] = {
    "uncertainty": 0.3,
    "margin": 0.2,
    "disagreement": 0.1,
    "diversity": 0.2,
    "random": 0.2,
}


def pad_ragged(rows: Sequence[Sequence[float]] | Sequence[np.ndarray], fill: float = np.nan) -> np.ndarray:
    """Stack per-task arrays whose last axis differs (captions per task) into one padded array."""
    arrays = [np.asarray(r, dtype=np.float64) for r in rows]
    if not arrays:
        return np.zeros((0, 0))
    width = max(a.shape[-1] for a in arrays)
    lead = arrays[0].shape[:-1]
    out = np.full((len(arrays), *lead, width), fill, dtype=np.float64)
    for i, a in enumerate(arrays):
        out[i, ..., : a.shape[-1]] = a
    return out


def _pair_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, k=1)
    return i, j


def ensemble_disagreement(member_rewards: np.ndarray) -> np.ndarray:
    """[T, E, n] -> [T]: how much the ensemble members disagree about the order of a task's captions.

    For each caption pair the majority order is the sign of the mean difference; the minority share
    (0 = unanimous, 0.5 = split) is doubled so the score spans [0, 1], then averaged over the pairs
    that exist (padded captions are NaN and ignored).
    """
    r = np.asarray(member_rewards, dtype=np.float64)
    t, e, n = r.shape
    if n < 2 or t == 0:
        return np.zeros(t)
    i, j = _pair_indices(n)
    diff = r[:, :, i] - r[:, :, j]  # [T, E, P]
    valid = ~np.isnan(diff).any(axis=1)  # [T, P]
    above = np.nan_to_num(diff > 0).sum(axis=1)  # members ordering i over j
    below = np.nan_to_num(diff < 0).sum(axis=1)
    minority = np.minimum(above, below) / e
    per_pair = np.where(valid, 2.0 * minority, 0.0)
    counts = valid.sum(axis=1)
    return np.divide(per_pair.sum(axis=1), counts, out=np.zeros(t), where=counts > 0)


def _top_two(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    filled = np.where(np.isnan(rewards), -np.inf, rewards)
    order = np.argsort(-filled, axis=1)
    rows = np.arange(len(rewards))
    first = filled[rows, order[:, 0]]
    second = filled[rows, order[:, 1]] if rewards.shape[1] > 1 else np.full(len(rewards), -np.inf)
    return first, second, np.isfinite(second)


def bt_margin(rewards: np.ndarray) -> np.ndarray:
    """[T, n] -> [T]: 1 - |2p - 1| with p = sigmoid(best - runner-up), the Bradley-Terry probability
    that the model's top caption really beats its second. 1 = a coin flip, 0 = settled."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        return np.zeros(len(r))
    first, second, ok = _top_two(r)
    gap = np.where(ok, first - second, np.inf)
    p = 1.0 / (1.0 + np.exp(-gap))
    return np.where(ok, 1.0 - np.abs(2.0 * p - 1.0), 0.0)


def kendall_tau(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Kendall tau-b of two [T, n] arrays (NaN = padding). Rows with fewer than two valid
    pairs, or no variation, get tau 1 (nothing to disagree about)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    t, n = a.shape
    if n < 2 or t == 0:
        return np.ones(t)
    i, j = _pair_indices(n)
    da, db = a[:, i] - a[:, j], b[:, i] - b[:, j]
    valid = ~(np.isnan(da) | np.isnan(db))
    sa, sb = np.sign(np.nan_to_num(da)), np.sign(np.nan_to_num(db))
    sa, sb = np.where(valid, sa, 0.0), np.where(valid, sb, 0.0)
    concord = (sa * sb).sum(axis=1)
    na, nb = (sa != 0).sum(axis=1), (sb != 0).sum(axis=1)
    denom = np.sqrt(na * nb)
    return np.divide(concord, denom, out=np.ones(t), where=denom > 0)


def reward_clip_disagreement(rewards: np.ndarray, clipscores: np.ndarray) -> np.ndarray:
    """[T, n] x [T, n] -> [T]: (1 - Kendall tau) / 2 between the reward order and CLIPScore's."""
    return (1.0 - kendall_tau(rewards, clipscores)) / 2.0


def kcenter_greedy(
    embeddings: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    already_selected: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center (Sener & Savarese 2018): repeatedly take the point farthest from every centre.

    Returns ``(order, distance)``: ``order`` the indices picked, in order (at most k), and
    ``distance`` [T] each point's distance to its nearest centre after picking (0 for centres).
    ``already_selected`` (e.g. tasks that already have judgments) are centres from the start, so the
    batch fills the gaps they leave. With none, the first centre is a seeded random point.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    t = len(x)
    dist = np.full(t, np.inf)
    picked: list[int] = []
    if t == 0 or k <= 0:
        return np.asarray(picked, dtype=np.int64), np.zeros(t)
    sq = (x * x).sum(axis=1)

    def _update(center: int) -> None:
        d = np.sqrt(np.maximum(sq + sq[center] - 2.0 * x @ x[center], 0.0))
        np.minimum(dist, d, out=dist)
        dist[center] = 0.0  # the expansion above leaves rounding noise on the centre itself

    seeds = [int(s) for s in (already_selected if already_selected is not None else [])]
    for s in seeds:
        _update(s)
    if not seeds:
        first = int(np.random.default_rng(seed).integers(t))
        picked.append(first)
        _update(first)
    while len(picked) < min(k, t):
        candidate = int(np.argmax(dist))
        if dist[candidate] <= 0.0:
            break  # every point coincides with a centre: more picks would be duplicates
        picked.append(candidate)
        _update(candidate)
    return np.asarray(picked, dtype=np.int64), np.where(np.isfinite(dist), dist, 0.0)


def diversity_scores(
    embeddings: np.ndarray, k: int, *, seed: int = 0, already_selected: Sequence[int] | None = None
) -> np.ndarray:
    """[T, D] -> [T]: k-center centres score in (0.5, 1], first picked highest; every other task
    scores in [0, 0.5) by its distance to the nearest centre (the farther, the more novel)."""
    x = np.asarray(embeddings, dtype=np.float64)
    t = len(x)
    scores = np.zeros(t)
    if t == 0:
        return scores
    order, dist = kcenter_greedy(x, k, seed=seed, already_selected=already_selected)
    top = dist.max()
    if top > 0:
        scores = 0.499 * dist / top
    m = max(len(order), 1)
    scores[order] = 1.0 - 0.5 * np.arange(len(order)) / m
    return scores


def random_scores(n: int, *, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


def mix_normalise(mix: Mapping[str, float] | None, available: Sequence[str] = STRATEGIES) -> dict[str, float]:
    """Keep known strategies with positive weight that can be computed, rescaled to sum to 1.

    A campaign's ``selection_mix`` may carry other keys (e.g. ``retrain_after``); they are ignored.
    When none of the mix can be computed (no reward model yet, so no model-based scores), the
    remaining strategies of the default mix are used; failing that, random.
    """
    source = dict(mix) if mix else dict(DEFAULT_MIX)
    weights = {
        k: float(v)
        for k, v in source.items()
        if k in STRATEGIES and k in available and isinstance(v, int | float) and v > 0
    }
    if not weights:
        weights = {k: v for k, v in DEFAULT_MIX.items() if k in available}
    if not weights:
        weights = {"random": 1.0}
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


def _quotas(weights: Mapping[str, float], batch_size: int) -> dict[str, int]:
    """Largest-remainder rounding: quotas sum exactly to batch_size."""
    raw = {k: w * batch_size for k, w in weights.items()}
    quotas = {k: int(np.floor(v)) for k, v in raw.items()}
    short = batch_size - sum(quotas.values())
    for k in sorted(raw, key=lambda k: (raw[k] - quotas[k], weights[k]), reverse=True)[:short]:
        quotas[k] += 1
    return quotas


def priorities_mix(
    scores_by_strategy: Mapping[str, np.ndarray],
    mix: Mapping[str, float] | None,
    batch_size: int,
    seed: int = 0,
) -> np.ndarray:
    """Blend strategy scores ([T] each) into task priorities [T] following ``mix``.

    Each strategy gets a quota of the next ``batch_size`` tasks in proportion to its weight and fills
    it with its best-scoring tasks not taken yet (so the strategies never double-count one task).
    The batch is interleaved round-robin across strategies, so the head of the queue is already a
    mix, and gets priorities in (0.5, 1]. Everything else gets the weighted mean of its scores,
    squeezed into [0, 0.5): it is still ordered sensibly once the batch is used up.
    A strategy missing from ``scores_by_strategy`` gets no quota (its share goes to the others).
    ``random`` is generated here from ``seed`` when not supplied.
    """
    lengths = {len(np.asarray(v)) for v in scores_by_strategy.values()}
    if len(lengths) > 1:
        raise ValueError(f"strategy scores have different lengths: {sorted(lengths)}")
    t = lengths.pop() if lengths else 0
    scores = {k: np.asarray(v, dtype=np.float64) for k, v in scores_by_strategy.items() if k in STRATEGIES}
    if "random" not in scores:
        scores["random"] = random_scores(t, seed=seed)
    weights = mix_normalise(mix, available=list(scores))
    batch_size = max(0, min(int(batch_size), t))

    combined = sum(w * np.nan_to_num(scores[k]) for k, w in weights.items())
    priorities = 0.499 * np.clip(combined, 0.0, 1.0)
    if batch_size == 0:
        return priorities

    quotas = _quotas(weights, batch_size)
    taken = np.zeros(t, dtype=bool)
    picks: dict[str, list[int]] = {}
    # Strategies with the largest weight pick first; ties in a strategy's scores break by index,
    # which keeps the result deterministic for a fixed seed.
    for name in sorted(weights, key=lambda k: (-weights[k], STRATEGIES.index(k))):
        order = np.lexsort((np.arange(t), -np.nan_to_num(scores[name], nan=-1.0)))
        chosen: list[int] = []
        for idx in order:
            if len(chosen) >= quotas[name]:
                break
            if not taken[idx]:
                chosen.append(int(idx))
                taken[idx] = True
        picks[name] = chosen

    batch: list[int] = []
    queues = [list(p) for p in picks.values()]
    while any(queues):
        for q in queues:
            if q:
                batch.append(q.pop(0))
    priorities[batch] = 1.0 - 0.5 * np.arange(len(batch)) / len(batch)
    return priorities


def strategy_scores(
    *,
    member_rewards: np.ndarray | None,
    clipscores: np.ndarray | None,
    embeddings: np.ndarray | None,
    batch_size: int,
    seed: int = 0,
    labelled: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Every strategy's scores that the inputs allow (no model -> no model-based strategies)."""
    out: dict[str, np.ndarray] = {}
    t = None
    if member_rewards is not None and np.asarray(member_rewards).size:
        mr = np.asarray(member_rewards, dtype=np.float64)
        t = len(mr)
        # Padded captions are NaN in every member, so the plain mean keeps them NaN (= absent).
        mean = mr.mean(axis=1)
        out["uncertainty"] = ensemble_disagreement(mr)
        out["margin"] = bt_margin(mean)
        if clipscores is not None:
            out["disagreement"] = reward_clip_disagreement(mean, np.asarray(clipscores))
    if embeddings is not None and len(embeddings):
        t = len(embeddings)
        out["diversity"] = diversity_scores(embeddings, batch_size, seed=seed, already_selected=labelled)
    if t is None and clipscores is not None:
        t = len(clipscores)
    out["random"] = random_scores(t or 0, seed=seed)
    return out
