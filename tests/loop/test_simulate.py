"""Simulated annotators (training/simulate.py): valid judgments that follow the hidden preference."""

from __future__ import annotations

import numpy as np

from training.simulate import (
    AnnotatorConfig,
    CaptionInfo,
    judgment_simulate,
    linear_preference,
    pairwise_accuracy,
    ranking_sample,
    source_length_quality,
    truth_preference,
)

CRITERIA = ["accuracy", "completeness"]


def _captions():
    return [CaptionInfo(10, "good", "human", "img"), CaptionInfo(11, "bad", "synthetic", "img")]


def test_judgment_has_every_caption_once_and_ratings_for_every_criterion():
    prefer = truth_preference({("img", "good"): 0.9, ("img", "bad"): 0.1})
    ranking, ratings = judgment_simulate(
        captions=_captions(),
        criteria=CRITERIA,
        preference=prefer,
        config=AnnotatorConfig(),
        rng=np.random.default_rng(0),
    )
    assert sorted(c for tier in ranking for c in tier) == [10, 11]
    assert set(ratings) == {"10", "11"}
    assert all(set(r) == set(CRITERIA) and all(1 <= v <= 5 for v in r.values()) for r in ratings.values())


def test_low_noise_annotator_follows_hidden_preference():
    prefer = truth_preference({("img", "good"): 0.9, ("img", "bad"): 0.1})
    rng = np.random.default_rng(1)
    firsts = [
        judgment_simulate(
            captions=_captions(),
            criteria=CRITERIA,
            preference=prefer,
            config=AnnotatorConfig(noise=0.05),
            rng=rng,
        )[0][0]
        for _ in range(100)
    ]
    assert all(first == [10] for first in firsts)


def test_noisy_annotator_sometimes_disagrees_at_the_bradley_terry_rate():
    rng = np.random.default_rng(2)
    config = AnnotatorConfig(noise=0.1, tie_margin=0.0)
    wins = sum(ranking_sample([0.6, 0.5], [1, 2], config, rng)[0] == [1] for _ in range(4000)) / 4000
    assert abs(wins - 1 / (1 + np.exp(-1.0))) < 0.03  # sigmoid(0.1 / 0.1)


def test_near_equal_captions_are_tied():
    tiers = ranking_sample([0.5, 0.505, 0.1], [1, 2, 3], AnnotatorConfig(noise=0.0, tie_margin=0.02), None)
    assert tiers == [[2, 1], [3]]


def test_better_captions_get_higher_ratings_on_average():
    prefer = truth_preference({("img", "good"): 0.9, ("img", "bad"): 0.1})
    rng = np.random.default_rng(3)
    good, bad = [], []
    for _ in range(50):
        _, ratings = judgment_simulate(
            captions=_captions(), criteria=CRITERIA, preference=prefer, config=AnnotatorConfig(), rng=rng
        )
        good.append(ratings["10"]["accuracy"])
        bad.append(ratings["11"]["accuracy"])
    assert np.mean(good) > np.mean(bad) + 2


def test_same_seed_gives_same_judgments():
    prefer = source_length_quality

    def run(seed):
        rng = np.random.default_rng(seed)
        return [
            judgment_simulate(
                captions=_captions(), criteria=CRITERIA, preference=prefer, config=AnnotatorConfig(), rng=rng
            )
            for _ in range(5)
        ]

    assert run(7) == run(7)


def test_truth_preference_falls_back_to_source_prior_for_unknown_pairs():
    prefer = truth_preference({})
    assert prefer(CaptionInfo(1, "a long specific human description of a red bicycle", "human")) > prefer(
        CaptionInfo(2, "bike", "synthetic")
    )


def test_linear_preference_and_pairwise_accuracy():
    feats = {1: np.array([1.0, 0.0]), 2: np.array([0.0, 1.0])}
    prefer = linear_preference(np.array([2.0, -2.0]), feats)
    assert prefer(CaptionInfo(1, "")) > prefer(CaptionInfo(2, ""))
    assert pairwise_accuracy([1.0, 0.0, 0.0, 1.0], [0.9, 0.1, 0.9, 0.1], [0, 0, 1, 1]) == 0.5
