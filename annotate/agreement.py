"""Agreement statistics over rankings with ties and ordinal ratings. Pure numpy; no Django.

A ranking is a list of tiers, best first: ``[[12], [7, 9], [3]]`` means 12 > 7 = 9 > 3. Statistics that
need numbers use mid-ranks, so a tie of the 2nd and 3rd place gives both 2.5.
Undefined values (a constant ranking, fewer than two raters) are ``nan``, never a made-up 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import combinations

import numpy as np

Ranking = Sequence[Sequence[Hashable]]


def midranks(ranking: Ranking) -> dict[Hashable, float]:
    """Item -> mid-rank (1 = best). A tier of size t starting at position p gets p + (t - 1) / 2."""
    ranks: dict[Hashable, float] = {}
    position = 1
    for tier in ranking:
        size = len(tier)
        for item in tier:
            ranks[item] = position + (size - 1) / 2
        position += size
    return ranks


def kendall_tau_tiers(a: Ranking, b: Ranking) -> float:
    """Kendall's tau-b between two rankings with ties, over the items both contain.

    tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2)) with n0 = n(n-1)/2, n1 / n2 the pairs tied in a / b.
    """
    ra, rb = midranks(a), midranks(b)
    items = [item for item in ra if item in rb]
    concordant = discordant = tied_a = tied_b = 0
    for x, y in combinations(items, 2):
        da, db = np.sign(ra[x] - ra[y]), np.sign(rb[x] - rb[y])
        if da == 0:
            tied_a += 1
        if db == 0:
            tied_b += 1
        if da and db:
            if da == db:
                concordant += 1
            else:
                discordant += 1
    n0 = len(items) * (len(items) - 1) // 2
    denominator = math.sqrt((n0 - tied_a) * (n0 - tied_b))
    if denominator == 0:
        return float("nan")
    return (concordant - discordant) / denominator


def mean_pairwise_tau(rankings: Sequence[Ranking]) -> float:
    """Mean tau-b over all pairs of rankings, ignoring pairs where tau is undefined."""
    values = [kendall_tau_tiers(a, b) for a, b in combinations(rankings, 2)]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def kendalls_w(rankings: Sequence[Ranking]) -> float:
    """Kendall's coefficient of concordance W with the tie correction.

    W = 12 S / (m^2 (n^3 - n) - m * sum_j T_j), S = sum_i (R_i - mean R)^2, T_j = sum over rater j's tie
    groups of (t^3 - t). Every ranking must hold the same items.
    """
    m = len(rankings)
    if m < 2:
        return float("nan")
    items = sorted(midranks(rankings[0]), key=repr)
    n = len(items)
    if n < 2:
        return float("nan")
    totals = np.zeros(n)
    tie_sum = 0.0
    for ranking in rankings:
        ranks = midranks(ranking)
        if set(ranks) != set(items):
            raise ValueError("Kendall's W needs every ranking to hold the same items.")
        totals += [ranks[item] for item in items]
        tie_sum += sum(len(tier) ** 3 - len(tier) for tier in ranking)
    s = float(((totals - totals.mean()) ** 2).sum())
    denominator = m**2 * (n**3 - n) - m * tie_sum
    if denominator <= 0:
        return float("nan")
    return 12 * s / denominator


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def krippendorff_alpha_ordinal(units: Iterable[Iterable]) -> float:
    """Krippendorff's alpha with the ordinal metric.

    ``units``: one sequence of values per unit (e.g. a caption), one value per coder; ``None`` or NaN
    marks a coder who did not rate that unit. Units with fewer than two values are not pairable and are
    ignored. Follows Krippendorff (2011), "Computing Krippendorff's alpha-reliability": coincidence matrix
    o_ck, marginals n_c, ordinal distance d_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2,
    alpha = 1 - (n - 1) * sum o_ck d_ck / sum n_c n_k d_ck.
    """
    pairable = []
    for unit in units:
        values = [v for v in unit if not _is_missing(v)]
        if len(values) >= 2:
            pairable.append(values)
    if not pairable:
        return float("nan")
    levels = sorted({v for values in pairable for v in values})
    index = {v: i for i, v in enumerate(levels)}
    k = len(levels)
    # Value counts per unit (units x levels), built flat: one Python pass, then numpy.
    rows = np.repeat(np.arange(len(pairable)), [len(values) for values in pairable])
    cols = np.fromiter((index[v] for values in pairable for v in values), dtype=np.int64, count=len(rows))
    counts = np.zeros((len(pairable), k))
    np.add.at(counts, (rows, cols), 1.0)
    weights = 1.0 / (counts.sum(axis=1) - 1.0)
    # All ordered pairs of values from different coders within a unit, each weighted 1 / (m_u - 1).
    coincidence = (counts * weights[:, None]).T @ counts - np.diag((counts * weights[:, None]).sum(axis=0))
    marginals = coincidence.sum(axis=1)
    n = marginals.sum()
    if k < 2:
        return float("nan")  # everyone gave the same value: no variation to agree about
    cumulative = np.concatenate([[0.0], np.cumsum(marginals)])
    distance = np.zeros((k, k))
    for c in range(k):
        for d in range(k):
            lo, hi = min(c, d), max(c, d)
            distance[c, d] = (cumulative[hi + 1] - cumulative[lo] - (marginals[c] + marginals[d]) / 2) ** 2
    observed = (coincidence * distance).sum()
    expected = (np.outer(marginals, marginals) * distance).sum()
    if expected == 0:
        return float("nan")
    return float(1 - (n - 1) * observed / expected)


def consensus_ranking(rankings: Sequence[Ranking], *, tolerance: float = 1e-9) -> list[list]:
    """Mean mid-rank per item, grouped into tiers (equal means tie). Items missing from a ranking are
    averaged over the rankings that hold them."""
    sums: dict[Hashable, float] = {}
    counts: dict[Hashable, int] = {}
    for ranking in rankings:
        for item, rank in midranks(ranking).items():
            sums[item] = sums.get(item, 0.0) + rank
            counts[item] = counts.get(item, 0) + 1
    means = sorted(((sums[item] / counts[item], item) for item in sums), key=lambda p: (p[0], repr(p[1])))
    tiers: list[list] = []
    last = None
    for mean, item in means:
        if last is not None and abs(mean - last) <= tolerance:
            tiers[-1].append(item)
        else:
            tiers.append([item])
        last = mean
    return tiers


def leave_one_out_agreement(rankings: Mapping[Hashable, Ranking]) -> dict[Hashable, float]:
    """Per rater: tau-b between their ranking and the consensus of the others (needs two or more raters)."""
    result: dict[Hashable, float] = {}
    if len(rankings) < 2:
        return result
    for rater, ranking in rankings.items():
        others = [r for other, r in rankings.items() if other != rater]
        result[rater] = kendall_tau_tiers(ranking, consensus_ranking(others))
    return result


def pairwise_accuracy(ranking: Ranking, reference: Ranking) -> float:
    """Share of the reference's strict pairs that ``ranking`` orders the same way; a tie earns half.

    Used for gold accuracy: it reads as "how often the annotator got a known preference right".
    """
    ra, rr = midranks(ranking), midranks(reference)
    score = pairs = 0.0
    for x, y in combinations([item for item in rr if item in ra], 2):
        if rr[x] == rr[y]:
            continue
        pairs += 1
        da = np.sign(ra[x] - ra[y])
        if da == 0:
            score += 0.5
        elif da == np.sign(rr[x] - rr[y]):
            score += 1
    return score / pairs if pairs else float("nan")


def histogram(values: Sequence[float], *, lo: float = -1.0, hi: float = 1.0, bins: int = 10):
    """Counts and edges for the charts tag, ignoring NaN."""
    clean = [v for v in values if not math.isnan(v)]
    counts, edges = np.histogram(clean, bins=bins, range=(lo, hi))
    return counts.tolist(), edges.tolist()
