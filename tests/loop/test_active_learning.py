"""Selection strategies (training/active_learning.py): each ranks an uncertain task above a certain one."""

from __future__ import annotations

import numpy as np
import pytest

from training.active_learning import (
    DEFAULT_MIX,
    bt_margin,
    diversity_scores,
    ensemble_disagreement,
    kcenter_greedy,
    kendall_tau,
    mix_normalise,
    pad_ragged,
    priorities_mix,
    random_scores,
    reward_clip_disagreement,
    strategy_scores,
)


def test_ensemble_disagreement_ranks_split_ensemble_above_unanimous_one():
    unanimous = [[3.0, 2.0, 1.0]] * 4  # every member: a > b > c
    split = [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]
    scores = ensemble_disagreement(np.array([unanimous, split]))
    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(1.0)


def test_ensemble_disagreement_ignores_padded_captions():
    # task 0 has 2 captions (third padded), members agree on them
    member = np.array([[[2.0, 1.0, np.nan], [3.0, 0.0, np.nan]], [[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]])
    scores = ensemble_disagreement(member)
    assert scores[0] == 0.0
    assert scores[1] > 0.5


def test_bt_margin_prefers_close_top_two():
    rewards = np.array([[5.0, 0.0, -1.0], [1.0, 0.98, -3.0]])
    scores = bt_margin(rewards)
    assert scores[1] > 0.95
    assert scores[0] < 0.05
    assert np.all((scores >= 0) & (scores <= 1))


def test_bt_margin_single_caption_is_zero():
    assert bt_margin(np.array([[1.0, np.nan]]))[0] == 0.0


def test_reward_clip_disagreement_ranks_reversed_order_above_agreeing_order():
    rewards = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    clip = np.array([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9]])
    scores = reward_clip_disagreement(rewards, clip)
    assert scores[0] == pytest.approx(0.0)
    assert scores[1] == pytest.approx(1.0)


def test_kendall_tau_ignores_padding():
    tau = kendall_tau(np.array([[1.0, 2.0, np.nan]]), np.array([[1.0, 2.0, np.nan]]))
    assert tau[0] == pytest.approx(1.0)


def test_kcenter_picks_spread_out_points_not_near_duplicates():
    rng = np.random.default_rng(0)
    # three tight clusters far apart, the first one much larger
    clusters = [np.array([0.0, 0.0]), np.array([10.0, 0.0]), np.array([0.0, 10.0])]
    points = np.concatenate(
        [c + 0.01 * rng.standard_normal((n, 2)) for c, n in zip(clusters, (30, 3, 3), strict=True)]
    )
    order, dist = kcenter_greedy(points, 3, seed=1)
    labels = {int(np.argmin([np.linalg.norm(points[i] - c) for c in clusters])) for i in order}
    assert labels == {0, 1, 2}
    assert np.all(dist[order] == 0)


def test_kcenter_fills_gaps_left_by_already_selected():
    points = np.array([[0.0], [0.1], [5.0], [10.0]])
    order, _ = kcenter_greedy(points, 1, already_selected=[0])
    assert order.tolist() == [3]


def test_diversity_ranks_isolated_image_above_near_duplicate():
    points = np.array([[0.0, 0.0], [0.001, 0.0], [0.0, 0.001], [5.0, 5.0]])
    scores = diversity_scores(points, 2, seed=0, already_selected=[0])
    assert scores[3] == scores.max()
    assert scores[3] > scores[1] and scores[3] > scores[2]
    assert np.all((scores >= 0) & (scores <= 1))


def test_random_scores_are_deterministic_with_a_seed():
    assert np.array_equal(random_scores(10, seed=3), random_scores(10, seed=3))
    assert not np.array_equal(random_scores(10, seed=3), random_scores(10, seed=4))


def test_mix_normalise_drops_unknown_keys_and_unavailable_strategies():
    weights = mix_normalise({"uncertainty": 2, "random": 2, "retrain_after": 50}, available=["random"])
    assert weights == {"random": 1.0}
    weights = mix_normalise({"uncertainty": 3, "random": 1})
    assert weights == {"uncertainty": 0.75, "random": 0.25}


def test_priorities_mix_gives_each_strategy_its_quota_without_duplicates():
    t = 20
    unc = np.zeros(t)
    unc[[0, 1, 2]] = 1.0
    div = np.zeros(t)
    div[[2, 3, 4]] = 1.0  # task 2 is top for both: it must be counted once
    prio = priorities_mix({"uncertainty": unc, "diversity": div}, {"uncertainty": 0.5, "diversity": 0.5}, 6)
    batch = set(np.argsort(-prio)[:6].tolist())
    assert {0, 1, 2, 3, 4} <= batch
    assert np.all(prio[list(batch)] > 0.5)
    assert np.all(np.delete(prio, list(batch)) < 0.5)


def test_priorities_mix_head_of_queue_interleaves_strategies():
    t = 10
    unc = np.linspace(1, 0, t)
    div = np.linspace(0, 1, t)
    prio = priorities_mix({"uncertainty": unc, "diversity": div}, {"uncertainty": 0.5, "diversity": 0.5}, 4)
    head = np.argsort(-prio)[:2].tolist()
    assert sorted(head) == [0, 9]


def test_priorities_mix_is_deterministic_with_a_seed():
    rng = np.random.default_rng(0)
    scores = {"uncertainty": rng.random(50), "diversity": rng.random(50)}
    a = priorities_mix(scores, DEFAULT_MIX, 10, seed=7)
    b = priorities_mix(scores, DEFAULT_MIX, 10, seed=7)
    c = priorities_mix(scores, DEFAULT_MIX, 10, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_priorities_mix_without_model_scores_falls_back_to_available_strategies():
    prio = priorities_mix({"diversity": np.array([0.1, 0.9, 0.2])}, DEFAULT_MIX, 1)
    assert prio.shape == (3,)
    assert np.all((prio >= 0) & (prio <= 1))


def test_strategy_scores_rank_uncertain_task_first_with_padding():
    member = pad_ragged([np.array([[2.0, 1.0], [2.0, 1.0]]), np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0]])])
    clip = pad_ragged([[0.3, 0.1], [0.1, 0.3, 0.2]])
    out = strategy_scores(member_rewards=member, clipscores=clip, embeddings=np.eye(2), batch_size=1)
    assert set(out) == {"batch", "uncertainty", "margin", "disagreement", "diversity", "random"}
    assert out["uncertainty"][1] > out["uncertainty"][0]
    assert out["margin"][1] > out["margin"][0]
