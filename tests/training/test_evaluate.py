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
