"""The batch-mode strategy (training/active_learning.py): informativeness x diversity, warm-up schedule."""

from __future__ import annotations

import numpy as np
import pytest

from training.active_learning import (
    DEFAULT_MIX,
    batch_scores,
    batch_select,
    informativeness,
    pad_ragged,
    pair_mutual_information,
    priorities_mix,
    rank_normalise,
    strategy_scores,
    warm_share,
)


def _clusters(sizes=(40, 5, 5), seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    points = np.concatenate(
        [c + 0.02 * rng.standard_normal((n, 3)) for c, n in zip(centres, sizes, strict=True)]
    )
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return points, labels


def test_pair_mutual_information_is_high_for_confident_disagreement_and_low_for_a_coin_flip():
    agree = [[4.0, 0.0]] * 4  # every member sure a > b
    split = [[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 4.0]]  # each sure, half each way
    coin = [[0.0, 0.0]] * 4  # every member calls it 50/50: aleatoric, not epistemic
    mi = pair_mutual_information(np.array([agree, split, coin]))
    assert mi[1] > 0.5
    assert mi[0] < 0.05 and mi[2] < 1e-9


def test_pair_mutual_information_ignores_padding_and_sums_over_pairs():
    split3 = [[4.0, 0.0, 2.0], [0.0, 4.0, 2.0]]
    split2 = [[4.0, 0.0, np.nan], [0.0, 4.0, np.nan]]
    mi = pair_mutual_information(np.array([split3, split2]))
    assert np.all(np.isfinite(mi))
    assert mi[0] > mi[1] > 0  # three pairs of information against one
    mean = pair_mutual_information(np.array([split3, split2]), reduce="mean")
    assert mean[1] == pytest.approx(mi[1])


def test_pair_mutual_information_rejects_a_flat_array():
    with pytest.raises(ValueError, match="tasks, members, captions"):
        pair_mutual_information(np.zeros((3, 4)))


def test_rank_normalise_spans_zero_to_one_and_shares_ties():
    r = rank_normalise(np.array([5.0, 1.0, 1.0, np.nan, 9.0]))
    assert r[4] == 1.0 and r[3] == 0.0
    assert r[1] == r[2]
    assert rank_normalise(np.array([])).shape == (0,)
    assert rank_normalise(np.array([3.0])).tolist() == [1.0]


def test_informativeness_is_in_unit_interval_and_ranks_the_contested_task_first():
    calm = [[3.0, 0.0, -3.0]] * 5
    contested = [[1.0, 0.0, -1.0], [-1.0, 0.0, 1.0]] * 2 + [[0.5, 0.0, 0.0]]
    clip = np.array([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9]])
    info = informativeness(np.array([calm, contested]), clip)
    assert info.shape == (2,)
    assert np.all((info >= 0) & (info <= 1))
    assert info[1] > info[0]


def test_warm_share_follows_skill_when_known_else_the_labelled_count():
    assert warm_share(skill=0.5) == 0.0
    assert warm_share(skill=0.95) == 1.0
    assert 0 < warm_share(skill=0.62) < 1
    assert warm_share(labelled_count=0) == 0.0
    assert warm_share(labelled_count=10) < warm_share(labelled_count=1000) < 1.0
    assert warm_share(labelled_count=50, skill=float("nan")) == warm_share(labelled_count=50)


def test_batch_select_shapes_and_determinism_by_seed():
    rng = np.random.default_rng(1)
    emb, info = rng.standard_normal((200, 8)), rng.random(200)
    a, w = batch_select(emb, info, 15, warm=0.5, seed=3)
    b, _ = batch_select(emb, info, 15, warm=0.5, seed=3)
    c, _ = batch_select(emb, info, 15, warm=0.5, seed=4)
    assert a.shape == (15,) and w.shape == (200,)
    assert len(set(a.tolist())) == 15
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batch_select_warm_covers_every_cluster_where_top_k_would_not():
    points, labels = _clusters()
    # The big cluster is a little more informative: plain top-k would take all 3 tasks from it.
    info = np.where(labels == 0, 1.0, 0.8)
    covered = [
        set(labels[batch_select(points, info, 3, warm=1.0, seed=seed)[0]].tolist()) == {0, 1, 2}
        for seed in range(20)
    ]
    assert np.mean(covered) >= 0.85


def test_batch_select_cold_is_a_uniform_draw():
    points, labels = _clusters()  # 40 of 50 tasks in one cluster
    info = np.where(labels == 0, 0.0, 1.0)  # a cold model's opinion is ignored
    picks = np.concatenate([batch_select(points, info, 5, warm=0.0, seed=s)[0] for s in range(100)])
    assert 0.7 < np.mean(labels[picks] == 0) < 0.9
    assert all(len(set(batch_select(points, info, 5, warm=0.0, seed=s)[0].tolist())) == 5 for s in range(10))


def test_batch_select_warm_prefers_informative_tasks():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((400, 16))
    info = np.zeros(400)
    info[:40] = 1.0
    hits = [np.isin(batch_select(emb, info, 20, warm=1.0, seed=s)[0], np.arange(40)).mean() for s in range(5)]
    cold = [np.isin(batch_select(emb, info, 20, warm=0.0, seed=s)[0], np.arange(40)).mean() for s in range(5)]
    assert np.mean(hits) > 0.9
    assert np.mean(cold) < 0.3


def test_batch_select_fills_the_gaps_labelled_tasks_leave():
    points, labels = _clusters(sizes=(20, 20, 20))
    labelled = points[labels != 2][:30]  # clusters 0 and 1 are already covered
    for seed in range(5):
        order, _ = batch_select(points, None, 1, warm=1.0, labelled_embeddings=labelled, seed=seed)
        assert labels[order[0]] == 2


def test_batch_select_degenerate_inputs():
    order, w = batch_select(np.zeros((0, 4)), np.zeros(0), 5)
    assert order.shape == (0,) and w.shape == (0,)
    emb = np.random.default_rng(0).standard_normal((4, 3))
    order, _ = batch_select(emb, np.full(4, 0.5), 10, warm=0.5)  # batch larger than the pool
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    order, _ = batch_select(np.ones((5, 3)), None, 5)  # identical points: still a full batch
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4]
    order, _ = batch_select(np.zeros((3, 3)), np.zeros(3), 2, warm=1.0)  # zero vectors, zero weight
    assert len(order) == 2
    nan_emb = emb.copy()
    nan_emb[1, 0] = np.nan
    order, _ = batch_select(nan_emb, np.array([0.1, np.nan, 0.9, 0.5]), 3, warm=0.5)
    assert len(set(order.tolist())) == 3
    with pytest.raises(ValueError, match="expected"):
        batch_select(emb, np.zeros(3), 2)


def test_batch_scores_put_the_picks_above_everything_else():
    rng = np.random.default_rng(2)
    scores = batch_scores(rng.standard_normal((50, 4)), rng.random(50), 7, warm=0.7, seed=0)
    assert scores.shape == (50,)
    head = np.argsort(-scores)[:7]
    assert np.all(scores[head] > 0.5) and np.all(np.delete(scores, head) < 0.5)
    assert np.all((scores >= 0) & (scores <= 1))


def test_strategy_scores_batch_handles_ragged_tasks_and_labelled_context():
    rng = np.random.default_rng(0)
    member = pad_ragged([rng.standard_normal((5, n)) for n in (2, 3, 4, 3, 2, 4)])
    clip = pad_ragged([rng.random(n) for n in (2, 3, 4, 3, 2, 4)])
    emb = rng.standard_normal((9, 6))  # 6 open tasks, then 3 labelled
    out = strategy_scores(
        member_rewards=member, clipscores=clip, embeddings=emb, batch_size=3, seed=1, labelled=[6, 7, 8]
    )
    assert set(out) == {"batch", "uncertainty", "margin", "disagreement", "diversity", "random"}
    assert all(v.shape == (6,) for v in out.values())
    assert all(np.all(np.isfinite(v)) for v in out.values())
    assert (out["batch"] > 0.5).sum() == 3
    again = strategy_scores(
        member_rewards=member, clipscores=clip, embeddings=emb, batch_size=3, seed=1, labelled=[6, 7, 8]
    )
    assert np.array_equal(out["batch"], again["batch"])


def test_strategy_scores_batch_without_a_model_is_coverage_only():
    emb = np.random.default_rng(0).standard_normal((12, 4))
    out = strategy_scores(
        member_rewards=None, clipscores=None, embeddings=emb, batch_size=4, labelled=[10, 11]
    )
    assert out["batch"].shape == (12,)
    assert (out["batch"][:10] > 0.5).sum() == 4
    assert np.all(out["batch"][10:] == 0)  # labelled rows are context, never picked


def test_strategy_scores_with_zero_tasks():
    out = strategy_scores(member_rewards=None, clipscores=None, embeddings=np.zeros((0, 4)), batch_size=5)
    assert out["random"].shape == (0,)
    assert priorities_mix(out, DEFAULT_MIX, 5).shape == (0,)


def test_default_mix_is_served_by_strategy_scores():
    rng = np.random.default_rng(0)
    member = rng.standard_normal((30, 5, 4))
    out = strategy_scores(
        member_rewards=member,
        clipscores=rng.random((30, 4)),
        embeddings=rng.standard_normal((30, 8)),
        batch_size=5,
    )
    assert set(DEFAULT_MIX) <= set(out)
    prio = priorities_mix(out, DEFAULT_MIX, 5, seed=0)
    assert (prio > 0.5).sum() == 5


def test_strategy_scores_computes_only_the_strategies_asked_for():
    rng = np.random.default_rng(0)
    out = strategy_scores(
        member_rewards=rng.standard_normal((10, 3, 3)),
        clipscores=rng.random((10, 3)),
        embeddings=rng.standard_normal((10, 4)),
        batch_size=2,
        strategies={"batch"},
    )
    assert set(out) == {"batch", "random"}


def test_batch_select_on_a_big_pool_projects_and_samples_centres(monkeypatch):
    import training.active_learning as al

    monkeypatch.setattr(al, "BATCH_EXACT_UP_TO", 100)
    monkeypatch.setattr(al, "BATCH_MAX_CENTRES", 10)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((500, 128)).astype(np.float32)
    labelled = rng.standard_normal((50, 128)).astype(np.float32)
    info = rng.random(500)
    a, w = batch_select(emb, info, 20, warm=1.0, labelled_embeddings=labelled, seed=5)
    b, _ = batch_select(emb, info, 20, warm=1.0, labelled_embeddings=labelled, seed=5)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 20
    assert np.mean(info[a]) > 0.75  # still informative picks after the projection
