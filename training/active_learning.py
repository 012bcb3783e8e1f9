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

- ``batch`` (the default): a whole batch drawn at once, task by task, with probability
  ``exp(warm * (sharpness * informativeness + log d^2 + log pair share))``: informativeness blends the
  ensemble's epistemic uncertainty (BALD over caption pairs), small predicted gaps and
  reward-vs-CLIPScore disagreement; ``d`` is the distance to the nearest task already judged or drawn
  (coverage, k-means++/BAL-PM style); ``warm`` grows with the model's held-out accuracy, and at 0 the
  draw is uniform random (a model near chance has nothing to say). See ``batch_select``.
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

from collections.abc import Collection, Mapping, Sequence

import numpy as np

STRATEGIES = ("batch", "uncertainty", "margin", "disagreement", "diversity", "random")
MODEL_STRATEGIES = ("uncertainty", "margin", "disagreement")

# The default mix: the batch strategy alone (benchmarks/active_learning.py; docs/loop.md, "Benchmark",
# has the numbers against random and the previous mix). It already blends uncertainty, small gaps,
# reward-vs-CLIPScore disagreement and coverage, and falls back to random draws while the model is
# near chance, so it needs no fixed random share.
DEFAULT_MIX: dict[str, float] = {"batch": 1.0}
# The mix before the batch strategy, kept for campaigns and the benchmark's comparison.
PREVIOUS_MIX: dict[str, float] = {
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


# --- batch mode: informativeness and diversity in one greedy pass ---------------------------------

# Informativeness inputs of the batch strategy and their weights (rank-normalised before mixing).
# ``bald`` is the epistemic part of the ensemble's uncertainty (below); ``margin`` and
# ``disagreement`` are the scores above.
BATCH_INFORMATIVENESS: dict[str, float] = {"bald": 0.5, "margin": 0.3, "disagreement": 0.2}
# Cold start -> warm schedule: the share of informativeness in the batch strategy grows with the
# labelled count as ``L / (L + BATCH_WARMUP_LABELS)`` unless the caller knows the model's held-out
# accuracy (``skill``), which then sets it directly.
BATCH_WARMUP_LABELS = 100.0
# Scale: above this many tasks, batch_select measures distances in a seeded Gaussian random projection
# to BATCH_PROJECTED_DIM dimensions (Johnson-Lindenstrauss: distances kept within ~15%, plenty for a
# sampling weight) and uses at most BATCH_MAX_CENTRES labelled tasks (a seeded sample) as centres, so
# 100k tasks x 5k labelled stay seconds, not minutes. Smaller pools (the benchmark's) are exact, float64.
BATCH_EXACT_UP_TO = 20_000
BATCH_PROJECTED_DIM = 64
BATCH_MAX_CENTRES = 2_000
# How strongly the batch strategy concentrates on informative tasks once warm (see batch_select).
BATCH_SHARPNESS = 12.0
SKILL_CHANCE, SKILL_TRUSTED = 0.58, 0.68


def pair_mutual_information(member_rewards: np.ndarray, reduce: str = "sum") -> np.ndarray:
    """[T, E, n] -> [T]: BALD for Bradley-Terry pairs, the epistemic part of the uncertainty.

    Each member e says caption i beats j with p_e = sigmoid(r_ei - r_ej). The mutual information
    between a judgment of the pair and the model is H(mean_e p_e) - mean_e H(p_e): high when the
    members are each confident but disagree, near 0 when they agree, and near 0 for a pair every
    member calls a coin flip (a close pair whose judgment would be noise). ``reduce="sum"`` adds
    the pairs of a task (a task with more captions gives more pairs per judgment); ``"mean"``
    averages them. Padded captions (NaN) are ignored.
    """
    r = np.asarray(member_rewards, dtype=np.float64)
    if r.ndim != 3:
        raise ValueError(f"member_rewards must be [tasks, members, captions], got shape {r.shape}")
    t, _, n = r.shape
    if n < 2 or t == 0:
        return np.zeros(t)
    i, j = _pair_indices(n)
    diff = r[:, :, i] - r[:, :, j]  # [T, E, P]
    valid = ~np.isnan(diff).any(axis=1)  # [T, P]
    p = 1.0 / (1.0 + np.exp(-np.clip(np.nan_to_num(diff), -30.0, 30.0)))

    def _entropy(q: np.ndarray) -> np.ndarray:
        q = np.clip(q, 1e-12, 1.0 - 1e-12)
        return -(q * np.log(q) + (1.0 - q) * np.log(1.0 - q))

    mi = np.maximum(_entropy(p.mean(axis=1)) - _entropy(p).mean(axis=1), 0.0)  # [T, P]
    mi = np.where(valid, mi, 0.0)
    if reduce == "sum":
        return mi.sum(axis=1)
    counts = valid.sum(axis=1)
    return np.divide(mi.sum(axis=1), counts, out=np.zeros(t), where=counts > 0)


def pair_share(rewards: np.ndarray) -> np.ndarray:
    """[T, n] (NaN = padding) -> [T] in [0, 1]: a task's caption pairs over the most any task has.
    One judgment of n captions yields n(n-1)/2 ranked pairs, so before the model can tell tasks
    apart, a task with more captions is worth more."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        return np.zeros(len(r))
    n = (~np.isnan(r)).sum(axis=1)
    pairs = n * (n - 1) / 2.0
    top = pairs.max()
    return pairs / top if top > 0 else np.zeros(len(r))


def rank_normalise(x: np.ndarray) -> np.ndarray:
    """[T] -> [T] in [0, 1] by rank (ties share their mean rank; NaN counts as the lowest), so scores
    on different scales mix by weight rather than by whichever has the widest range."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=-np.inf)
    t = len(x)
    if t <= 1:
        return np.ones(t) if t else np.zeros(0)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(t)
    ranks[order] = np.arange(t, dtype=np.float64)
    # Ties: every member of a group of equal values gets the group's mean rank.
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    sizes = np.diff(np.r_[starts, t])
    mean_rank = np.repeat(starts + (sizes - 1) / 2.0, sizes)
    ranks[order] = mean_rank
    return ranks / (t - 1)


def informativeness(
    member_rewards: np.ndarray,
    clipscores: np.ndarray | None = None,
    weights: Mapping[str, float] | None = None,
) -> np.ndarray:
    """[T, E, n] (+ [T, n]) -> [T] in [0, 1]: the weighted mean of the rank-normalised epistemic
    uncertainty (``pair_mutual_information``), ``bt_margin`` and ``reward_clip_disagreement``."""
    mr = np.asarray(member_rewards, dtype=np.float64)
    t = len(mr)
    if t == 0:
        return np.zeros(0)
    w = dict(weights or BATCH_INFORMATIVENESS)
    mean = mr.mean(axis=1)  # padded captions are NaN in every member and stay NaN
    parts: dict[str, np.ndarray] = {}
    if w.get("bald", 0) > 0:
        parts["bald"] = pair_mutual_information(mr)
    if w.get("margin", 0) > 0:
        parts["margin"] = bt_margin(mean)
    if w.get("disagreement", 0) > 0 and clipscores is not None:
        parts["disagreement"] = reward_clip_disagreement(mean, np.asarray(clipscores, dtype=np.float64))
    total = sum(w[k] for k in parts)
    if total <= 0:
        return np.zeros(t)
    return sum(w[k] * rank_normalise(v) for k, v in parts.items()) / total


def warm_share(*, labelled_count: int = 0, skill: float | None = None) -> float:
    """How much the batch strategy trusts the model, in [0, 1]: 0 = pure coverage (cold start), 1 =
    informativeness-weighted. From the model's held-out pairwise accuracy when known (0 at or below
    ``SKILL_CHANCE``, 1 from ``SKILL_TRUSTED``), else from how many tasks are labelled."""
    if skill is not None and np.isfinite(skill):
        return float(np.clip((skill - SKILL_CHANCE) / (SKILL_TRUSTED - SKILL_CHANCE), 0.0, 1.0))
    n = max(0, int(labelled_count))
    return n / (n + BATCH_WARMUP_LABELS)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, dtype=np.float32))
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def batch_select(
    embeddings: np.ndarray,
    informative: np.ndarray | None,
    k: int,
    *,
    warm: float = 1.0,
    labelled_embeddings: np.ndarray | None = None,
    seed: int = 0,
    base: np.ndarray | None = None,
    sharpness: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick a batch of k tasks that are informative and unlike each other, one draw at a time.

    Each draw takes task i with probability proportional to ``exp(warm * s_i)`` where

        s_i = sharpness * informative_i + log d_i^2 + log base_i

    - ``informative`` in [0, 1] (e.g. rank-normalised, so ``sharpness`` 12 makes the top tenth of the
      pool about 3x likelier than the next tenth): what the model expects to learn from the task;
    - ``d_i``: distance from the task's unit embedding to the nearest task already labelled or already
      drawn. ``log d^2`` is, up to constants, the entropy a nearest-neighbour estimator gains by adding
      the task (BAL-PM, Melo et al. 2024, adds this to the epistemic uncertainty); with ``warm`` 1 and
      no informativeness the draw is k-means++ seeding (``P ~ d^2``; BADGE, Ash et al. 2020, seeds its
      batches that way). A task next to one already in the batch is drawn rarely, so a batch does not
      spend twenty labels on near-duplicates, and regions nobody judged are drawn more;
    - ``base`` in [0, 1] (default 1): what a task is worth before the model says anything, e.g. its
      share of caption pairs.

    ``warm`` in [0, 1] is an inverse temperature saying how far to trust all that: 0 (no model, or one
    at chance) is a uniform random draw, which matches the pool's density, exactly what a model near
    chance cannot beat reliably; 1 is the full score. Sampling rather than argmax keeps a
    miscalibrated model from steering the whole batch. Memory O(T) beyond the inputs, time
    O(T * D * (k + labelled)). Returns ``(order, weight)``: the picked indices in pick order (at most
    k) and each task's weight without the distance term (``exp(warm * (sharpness * (info - 1) +
    log base))``, in [0, 1]), which orders the tasks that were not picked.
    """
    x = _unit_rows(embeddings)
    t = len(x)
    rng = np.random.default_rng(seed)
    lab = None
    if labelled_embeddings is not None and len(labelled_embeddings):
        lab = _unit_rows(labelled_embeddings)
        if t > BATCH_EXACT_UP_TO and len(lab) > BATCH_MAX_CENTRES:
            lab = lab[np.sort(rng.choice(len(lab), BATCH_MAX_CENTRES, replace=False))]
    if t > BATCH_EXACT_UP_TO and x.shape[1] > BATCH_PROJECTED_DIM:
        proj = rng.standard_normal((x.shape[1], BATCH_PROJECTED_DIM)).astype(np.float32)
        proj /= np.float32(np.sqrt(BATCH_PROJECTED_DIM))
        x = x @ proj
        lab = lab @ proj if lab is not None else None
    warm = float(np.clip(warm, 0.0, 1.0))
    tau = BATCH_SHARPNESS if sharpness is None else float(sharpness)
    info = np.zeros(t)
    if informative is not None:
        info = np.clip(np.nan_to_num(np.asarray(informative, dtype=np.float64)), 0.0, 1.0)
        if info.shape != (t,):
            raise ValueError(f"informative has shape {info.shape}, expected ({t},)")
    prior = np.ones(t)
    if base is not None:
        prior = np.clip(np.nan_to_num(np.asarray(base, dtype=np.float64)), 0.0, 1.0)
        if prior.shape != (t,):
            raise ValueError(f"base has shape {prior.shape}, expected ({t},)")
    with np.errstate(divide="ignore"):
        log_weight = warm * (tau * (info - 1.0) + np.log(prior)) if warm > 0 else np.zeros(t)
    weight = np.exp(log_weight)
    if t == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64), weight
    sq = (x.astype(np.float64) ** 2).sum(axis=1)
    d2 = np.full(t, np.inf)

    def _update(center: np.ndarray) -> None:
        d = sq + float(center.astype(np.float64) @ center) - 2.0 * (x @ center).astype(np.float64)
        np.minimum(d2, np.maximum(d, 0.0), out=d2)

    if warm > 0 and lab is not None:
        if t <= BATCH_EXACT_UP_TO:
            for start in range(0, len(lab), 1024):
                block = lab[start : start + 1024]
                d = sq[:, None] + (block.astype(np.float64) ** 2).sum(1)[None, :] - 2.0 * (x @ block.T)
                np.minimum(d2, np.maximum(d.min(axis=1), 0.0), out=d2)
        else:
            # float32 blocks of about 4M distances (16 MB) at a time, whatever T and L are.
            block_size = max(1, 4_000_000 // t)
            sq32 = sq.astype(np.float32)
            for start in range(0, len(lab), block_size):
                block = lab[start : start + block_size]
                d = x @ block.T
                d *= -2.0
                d += (block * block).sum(axis=1)[None, :]
                np.minimum(d2, np.maximum(d.min(axis=1) + sq32, 0.0), out=d2)
    picked: list[int] = []
    taken = np.zeros(t, dtype=bool)
    while len(picked) < min(k, t):
        score = log_weight.copy()
        if warm > 0 and np.isfinite(d2).any():  # no centre yet: the first draw goes by weight alone
            with np.errstate(divide="ignore"):
                score += warm * np.log(d2)
        score[taken] = -np.inf
        top = score.max()
        if not np.isfinite(top):
            # Everything left coincides with a centre or weighs nothing: take the heaviest, in index
            # order, so the batch is still full and still deterministic.
            rest = np.flatnonzero(~taken)
            fill = rest[np.lexsort((rest, -weight[rest]))][: min(k, t) - len(picked)]
            picked.extend(int(i) for i in fill)
            break
        p = np.exp(score - top)
        idx = int(rng.choice(t, p=p / p.sum()))
        picked.append(idx)
        taken[idx] = True
        if warm > 0:
            _update(x[idx])
    return np.asarray(picked, dtype=np.int64), weight


def batch_scores(
    embeddings: np.ndarray,
    informative: np.ndarray | None,
    k: int,
    *,
    warm: float = 1.0,
    labelled_embeddings: np.ndarray | None = None,
    seed: int = 0,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """[T] scores for ``priorities_mix``: the ``batch_select`` picks in (0.5, 1], in pick order; every
    other task in [0, 0.5) by its weight (informativeness blended with the warm share)."""
    t = len(embeddings)
    order, weight = batch_select(
        embeddings, informative, k, warm=warm, labelled_embeddings=labelled_embeddings, seed=seed, base=base
    )
    scores = 0.499 * np.clip(weight, 0.0, 1.0)  # the unpicked, by selection weight
    if len(order):
        scores[order] = 1.0 - 0.5 * np.arange(len(order)) / len(order)
    return scores if t else np.zeros(0)


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
    skill: float | None = None,
    strategies: Collection[str] | None = None,
) -> dict[str, np.ndarray]:
    """Every strategy's scores that the inputs allow (no model -> no model-based strategies).

    ``embeddings`` may be longer than ``member_rewards``: rows past the model-scored tasks are context
    (``labelled``: tasks that already have judgments, k-center's and the batch strategy's starting
    centres). Scores cover the model-scored tasks when there are any, else every embedding row.
    ``skill`` is the model's held-out pairwise accuracy if known (the batch strategy's warm share).
    ``strategies`` limits the work to those (e.g. a campaign's mix plus the default mix it falls back
    to): on a big campaign k-center over thousands of labelled centres is the expensive part.
    """
    wanted = set(STRATEGIES if strategies is None else strategies)
    out: dict[str, np.ndarray] = {}
    t = None
    info = base = None
    if member_rewards is not None and np.asarray(member_rewards).size:
        mr = np.asarray(member_rewards, dtype=np.float64)
        t = len(mr)
        # Padded captions are NaN in every member, so the plain mean keeps them NaN (= absent).
        mean = mr.mean(axis=1)
        if "uncertainty" in wanted:
            out["uncertainty"] = ensemble_disagreement(mr)
        if "margin" in wanted:
            out["margin"] = bt_margin(mean)
        clip = np.asarray(clipscores, dtype=np.float64) if clipscores is not None else None
        if clip is not None and "disagreement" in wanted:
            out["disagreement"] = reward_clip_disagreement(mean, clip)
        if "batch" in wanted:
            info = informativeness(mr, clip)
            base = pair_share(mean)
    if embeddings is not None and len(embeddings):
        emb = np.asarray(embeddings)
        lab = sorted({int(i) for i in (labelled if labelled is not None else [])})
        if lab and (lab[0] < 0 or lab[-1] >= len(emb)):
            raise ValueError(f"labelled indices must lie in [0, {len(emb)}), got {lab[0]}..{lab[-1]}")
        if "diversity" in wanted:
            out["diversity"] = diversity_scores(emb, batch_size, seed=seed, already_selected=lab)
        n_open = t if t is not None else len(emb)
        lab_set = set(lab)
        open_idx = np.asarray([i for i in range(n_open) if i not in lab_set], dtype=np.int64)
        open_info = open_base = None
        if info is not None and base is not None:
            if len(emb) < n_open:
                raise ValueError(f"{n_open} model-scored tasks but only {len(emb)} embeddings")
            open_info, open_base = info[open_idx], base[open_idx]
        warm = warm_share(labelled_count=len(lab), skill=skill) if info is not None else 0.0
        if "batch" in wanted:
            batch = np.zeros(len(emb))
            batch[open_idx] = batch_scores(
                emb[open_idx],
                open_info,
                batch_size,
                warm=warm,
                labelled_embeddings=emb[lab] if lab else None,
                seed=seed,
                base=open_base,
            )
            out["batch"] = batch
        if t is not None:
            out = {k: v[:t] for k, v in out.items()}
        else:
            t = len(emb)
    if t is None and clipscores is not None:
        t = len(clipscores)
    out["random"] = random_scores(t or 0, seed=seed)
    return out
