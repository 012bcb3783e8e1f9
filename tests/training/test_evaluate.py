"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate import (
    clipscore,
    expected_calibration_error,
    pairwise_accuracy,
    spearman,
    tie_aware_accuracy,
)


def test_pairwise_accuracy_excludes_tied_targets_and_half_credits_scorer_ties():
    score_a = np.array([1.0, 0.0, 2.0, 5.0, 3.0])
    score_b = np.array([0.0, 1.0, 2.0, 0.0, 3.0])
    target = np.array([1.0, 1.0, 1.0, 0.5, 0.0])
    # pairs 1-3 and 5 count: right, wrong, half (equal scores), half
    assert pairwise_accuracy(score_a, score_b, target) == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)


def test_pairwise_accuracy_is_nan_with_only_ties():
    assert math.isnan(pairwise_accuracy(np.array([1.0]), np.array([0.0]), np.array([0.5])))


def test_tie_aware_accuracy_rewards_predicted_ties():
    prob = np.array([0.9, 0.55, 0.52, 0.2])
    target = np.array([1.0, 0.5, 1.0, 0.5])
    # right (a), right (tie), wrong (tie predicted, a true), wrong (b predicted, tie true)
    assert tie_aware_accuracy(prob, target, margin=0.1) == pytest.approx(0.5)


def test_clipscore_is_scaled_clipped_cosine():
    img = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    txt = np.array([[1.0, 1.0], [-1.0, 0.0], [3.0, 0.0]])
    assert clipscore(img, txt).tolist() == pytest.approx([2.5 / math.sqrt(2), 0.0, 2.5])


def test_ece_is_zero_when_probabilities_match_frequencies():
    prob = np.array([0.75] * 4)
    target = np.array([1.0, 1.0, 1.0, 0.0])
    assert expected_calibration_error(prob, target) == pytest.approx(0.0)


def test_ece_of_overconfident_predictions():
    prob = np.array([0.95, 0.95])
    target = np.array([1.0, 0.0])
    # bins: 0.95 with targets 1,0 (mean .5) and 0.05 with targets 0,1 (mean .5): |0.45| everywhere
    assert expected_calibration_error(prob, target) == pytest.approx(0.45)


def test_spearman_ignores_missing_targets():
    predicted = np.array([1.0, 2.0, 3.0, 4.0, 9.0])
    target = np.array([2.0, 3.0, 4.0, 5.0, np.nan])
    assert spearman(predicted, target) == pytest.approx(1.0)
    assert math.isnan(spearman(predicted, np.array([3.0, 3.0, 3.0, 3.0, 3.0])))


def test_judge_accuracy_counts_only_pairs_it_judged_both_sides_of():
    import numpy as np

    from training.evaluate import judge_accuracy
    from training.pairs import PairSet, TrainingData

    pairset = PairSet(
        a=np.array([0, 2, 0]),
        b=np.array([1, 3, 3]),
        target=np.ones(3, np.float32),
        weight=np.ones(3, np.float32),
        rated_rows=np.zeros(0, np.int64),
        ratings=np.zeros((0, 1), np.float32),
    )
    data = TrainingData(
        image_feats=np.zeros((1, 2), np.float32),
        text_feats=np.zeros((4, 2), np.float32),
        image_of_row=np.zeros(4, np.int64),
        embed_dim=2,
        criteria=["a"],
        train=pairset,
        caption_ids=[10, 11, 12, 13],
    )
    # Caption 13 was never judged: only the pair (10, 11) counts, and the judge orders it right.
    assert judge_accuracy(data, pairset, {10: 80.0, 11: 20.0, 12: 5.0}) == (1.0, 1)
    assert judge_accuracy(data, pairset, {}) == (None, 0)
