"""Agreement statistics against values computed by hand (the working is in each docstring)."""

from __future__ import annotations

import math

import pytest

from annotate.agreement import (
    consensus_ranking,
    kendall_tau_tiers,
    kendalls_w,
    krippendorff_alpha_ordinal,
    leave_one_out_agreement,
    mean_pairwise_tau,
    midranks,
    pairwise_accuracy,
)


def test_midranks_average_tied_positions():
    assert midranks([[1], [2, 3], [4]]) == {1: 1.0, 2: 2.5, 3: 2.5, 4: 4.0}


def test_tau_identical_and_reversed_rankings():
    assert kendall_tau_tiers([[1], [2], [3]], [[1], [2], [3]]) == 1.0
    assert kendall_tau_tiers([[1], [2], [3]], [[3], [2], [1]]) == -1.0


def test_tau_b_with_ties_by_hand():
    """a = 1 > 2 = 3 > 4, b = 2 > 1 > 3 = 4. Pairs (sign in a, sign in b):
    (1,2): a 1 better, b 2 better -> discordant
    (1,3): a +, b +               -> concordant
    (1,4): +, +                   -> concordant
    (2,3): tied in a              -> n1 += 1
    (2,4): +, +                   -> concordant
    (3,4): a +, tied in b         -> n2 += 1
    C = 3, D = 1, n0 = 6, n1 = 1, n2 = 1: tau_b = (3 - 1) / sqrt(5 * 5) = 0.4.
    """
    assert kendall_tau_tiers([[1], [2, 3], [4]], [[2], [1], [3, 4]]) == pytest.approx(0.4)


def test_tau_is_undefined_when_one_ranking_is_all_ties():
    assert math.isnan(kendall_tau_tiers([[1, 2, 3]], [[1], [2], [3]]))


def test_mean_pairwise_tau_by_hand():
    """r1 = r2 = 1 > 2 > 3, r3 = 3 > 2 > 1: taus are 1 (r1,r2), -1 (r1,r3), -1 (r2,r3): mean -1/3."""
    rankings = [[[1], [2], [3]], [[1], [2], [3]], [[3], [2], [1]]]
    assert mean_pairwise_tau(rankings) == pytest.approx(-1 / 3)


def test_kendalls_w_with_tie_correction_by_hand():
    """Three raters, items 1..3. Mid-ranks: r1 = 1 > 2 = 3 -> (1, 2.5, 2.5); r2 = (1, 2, 3);
    r3 = 2 > 1 > 3 -> (2, 1, 3). Rank sums R = (4, 5.5, 8.5), mean 6, S = 4 + 0.25 + 6.25 = 10.5.
    Ties: r1 has one group of 2 -> T = 2^3 - 2 = 6. m = 3, n = 3:
    W = 12 * 10.5 / (9 * (27 - 3) - 3 * 6) = 126 / 198 = 0.63636...
    """
    rankings = [[[1], [2, 3]], [[1], [2], [3]], [[2], [1], [3]]]
    assert kendalls_w(rankings) == pytest.approx(126 / 198)


def test_kendalls_w_is_one_for_perfect_agreement():
    assert kendalls_w([[[1], [2], [3]]] * 4) == pytest.approx(1.0)


def test_krippendorff_alpha_ordinal_small_example_by_hand():
    """Two coders, three units, values (1,1), (2,3), (3,3).
    Coincidences (each unit m_u = 2, weight 1): o11 = 2, o23 = o32 = 1, o33 = 2. Marginals n1 = 2, n2 = 1,
    n3 = 3, n = 6. Ordinal distances d_ck = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2:
    d12 = (3 - 1.5)^2 = 2.25, d13 = (6 - 2.5)^2 = 12.25, d23 = (4 - 2)^2 = 4.
    Observed: sum o_ck d_ck = 2 * 4 = 8.
    Expected: sum n_c n_k d_ck = 2 * (2*1*2.25 + 2*3*12.25 + 1*3*4) = 2 * (4.5 + 73.5 + 12) = 180.
    alpha = 1 - (n - 1) * 8 / 180 = 1 - 40 / 180 = 0.7778.
    """
    assert krippendorff_alpha_ordinal([[1, 1], [2, 3], [3, 3]]) == pytest.approx(1 - 40 / 180)


def test_krippendorff_alpha_ordinal_matches_krippendorff_2011_with_missing_values():
    """The reliability data of Krippendorff (2011), 4 coders x 12 units with gaps; published ordinal
    alpha = 0.815."""
    n = None
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = list(zip(*coders, strict=True))
    assert krippendorff_alpha_ordinal(units) == pytest.approx(0.815, abs=5e-4)


def test_krippendorff_alpha_without_pairable_units_is_nan():
    assert math.isnan(krippendorff_alpha_ordinal([[1, None], [None, 3]]))


def test_consensus_ranking_by_mean_rank():
    """Mid-ranks of items 1, 2, 3 in (1 > 2 = 3), (1 > 2 > 3), (2 > 1 > 3): means 4/3, 11/6, 17/6."""
    assert consensus_ranking([[[1], [2, 3]], [[1], [2], [3]], [[2], [1], [3]]]) == [[1], [2], [3]]


def test_consensus_ranking_ties_equal_means():
    assert consensus_ranking([[[1], [2]], [[2], [1]]]) == [[1, 2]]


def test_leave_one_out_agreement_by_hand():
    """u, v rank 1 > 2 > 3 and w ranks 3 > 2 > 1 ... plus x = 1 > 2 > 3.
    For w, the others' consensus is 1 > 2 > 3: tau = -1. For u, others are v, w, x: mean ranks
    1: (1+3+1)/3 = 5/3, 2: 2, 3: 7/3 -> 1 > 2 > 3, tau = 1."""
    result = leave_one_out_agreement(
        {"u": [[1], [2], [3]], "v": [[1], [2], [3]], "w": [[3], [2], [1]], "x": [[1], [2], [3]]}
    )
    assert result["w"] == pytest.approx(-1.0)
    assert result["u"] == pytest.approx(1.0)


def test_pairwise_accuracy_counts_ties_half():
    """Gold 1 > 2 > 3 has strict pairs (1,2), (1,3), (2,3). Answer 1 = 2 > 3: tie on (1,2) = 0.5,
    (1,3) right, (2,3) right -> 2.5 / 3."""
    assert pairwise_accuracy([[1, 2], [3]], [[1], [2], [3]]) == pytest.approx(2.5 / 3)
