"""Pairs from rankings: counts, tie targets, weights, consensus, rating targets, the split."""

from __future__ import annotations

import numpy as np
import pytest

from training.pairs import (
    JudgmentRecord,
    human_agreement,
    image_split,
    pairs_from_ranking,
    pairs_weighted,
    rating_targets,
    training_data_build,
)


def test_four_captions_give_six_pairs_with_better_first():
    pairs = pairs_from_ranking([[1], [2], [3], [4]])
    assert len(pairs) == 6
    assert set(pairs) == {(1, 2, 1.0), (1, 3, 1.0), (1, 4, 1.0), (2, 3, 1.0), (2, 4, 1.0), (3, 4, 1.0)}


def test_tied_captions_get_half_target():
    pairs = pairs_from_ranking([[12], [7, 9], [3]])
    assert (7, 9, 0.5) in pairs
    assert (12, 7, 1.0) in pairs and (9, 3, 1.0) in pairs
    assert len(pairs) == 6


def test_ranking_with_repeated_caption_is_refused():
    with pytest.raises(ValueError, match="more than once"):
        pairs_from_ranking([[1], [1, 2]])


def test_each_judgments_pairs_sum_to_one():
    judgments = [
        JudgmentRecord(1, 1, [[1], [2], [3], [4]]),
        JudgmentRecord(1, 2, [[2], [1, 3], [4]]),
        JudgmentRecord(2, 1, [[5], [6], [7]]),
    ]
    pairs = pairs_weighted(judgments, "each")
    assert len(pairs) == 6 + 6 + 3
    for task, count in ((1, 12), (2, 3)):
        weights = [p.weight for p in pairs if p.task_id == task]
        assert len(weights) == count
    assert sum(p.weight for p in pairs[:6]) == pytest.approx(1.0)
    assert sum(p.weight for p in pairs[6:12]) == pytest.approx(1.0)
    assert sum(p.weight for p in pairs[12:]) == pytest.approx(1.0)


def test_consensus_merges_annotators_into_soft_targets_per_task():
    judgments = [
        JudgmentRecord(1, 1, [[1], [2], [3]]),
        JudgmentRecord(1, 2, [[1], [2], [3]]),
        JudgmentRecord(1, 3, [[2], [1], [3]]),
    ]
    pairs = pairs_weighted(judgments, "consensus")
    assert len(pairs) == 3
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)
    by_key = {(p.a, p.b): p.target for p in pairs}
    assert by_key[(1, 2)] == pytest.approx(2 / 3)
    assert by_key[(1, 3)] == pytest.approx(1.0)
    assert by_key[(2, 3)] == pytest.approx(1.0)


def test_consensus_orients_pair_towards_majority():
    judgments = [
        JudgmentRecord(1, 1, [[2], [1]]),
        JudgmentRecord(1, 2, [[2], [1]]),
        JudgmentRecord(1, 3, [[1], [2]]),
    ]
    (pair,) = pairs_weighted(judgments, "consensus")
    assert (pair.a, pair.b) == (2, 1) and pair.target == pytest.approx(2 / 3)


def test_unknown_consensus_mode_is_refused():
    with pytest.raises(ValueError, match="consensus mode"):
        pairs_weighted([], "vote")


def test_rating_targets_average_annotators_and_mark_missing():
    judgments = [
        JudgmentRecord(1, 1, [[1], [2]], {"1": {"a": 4, "b": 2}, "2": {"a": 1}}),
        JudgmentRecord(1, 2, [[1], [2]], {"1": {"a": 5, "b": 3}}),
    ]
    targets = rating_targets(judgments, ["a", "b"])
    assert targets[1].tolist() == [4.5, 2.5]
    assert targets[2][0] == 1.0 and np.isnan(targets[2][1])


def test_rating_outside_scale_is_refused():
    with pytest.raises(ValueError, match="outside 1-5"):
        rating_targets([JudgmentRecord(3, 1, [[1], [2]], {"1": {"a": 6}})], ["a"])


def test_human_agreement_counts_one_against_the_others():
    judgments = [
        JudgmentRecord(1, 1, [[1], [2]]),
        JudgmentRecord(1, 2, [[1], [2]]),
        JudgmentRecord(1, 3, [[2], [1]]),
        JudgmentRecord(2, 1, [[3], [4]]),  # single judgment: no one to agree with
    ]
    agreement, counted = human_agreement(judgments)
    # For users 1 and 2 the others are split evenly (left out); user 3 disagrees with users 1 and 2.
    assert counted == 1
    assert agreement == 0.0


def test_image_split_is_deterministic_and_roughly_proportional():
    keys = [f"{i:064x}" for i in range(2000)]
    splits = [image_split(k, 0.1, 0.2) for k in keys]
    assert splits == [image_split(k, 0.1, 0.2) for k in keys]
    assert 0.15 < splits.count("test") / 2000 < 0.25
    assert 0.06 < splits.count("validation") / 2000 < 0.14


def test_training_data_never_puts_an_image_in_two_splits():
    n = 200
    keys = [f"img{i // 4}" for i in range(n)]
    judgments = [
        JudgmentRecord(t, 1, [[4 * t + 1], [4 * t + 2], [4 * t + 3, 4 * t + 4]], {}, f"img{t}")
        for t in range(n // 4)
    ]
    data = training_data_build(
        judgments=judgments,
        caption_ids=list(range(1, n + 1)),
        row_image_keys=keys,
        image_feats=np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32),
        text_feats=np.random.default_rng(1).normal(size=(n, 6)).astype(np.float32),
        embed_dim=6,
        criteria=[],
    )
    assert data.image_feats.shape == (n // 4, 6)
    images = {}
    for split in ("train", "validation", "test"):
        ps = getattr(data, split)
        images[split] = set(data.image_of_row[np.concatenate([ps.a, ps.b])].tolist())
    assert not images["train"] & images["test"]
    assert not images["train"] & images["validation"]
    assert not images["validation"] & images["test"]
    assert sum(getattr(data, s).n_pairs for s in ("train", "validation", "test")) == 6 * n // 4
