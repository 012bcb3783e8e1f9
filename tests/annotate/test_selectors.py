"""Selectors: annotator progress, per-annotator statistics with gold and flags, campaign statistics."""

from __future__ import annotations

import uuid

import pytest

from annotate import selectors, services
from annotate.models import Judgment, Task
from tests.annotate.factories import campaign_with_tasks

pytestmark = pytest.mark.django_db


def _judge(campaign, user, ranking_of, *, rating=3, duration_ms=1000):
    """Claim the user's next task and answer it with ``ranking_of(caption_ids)``."""
    assignment = services.task_next(campaign=campaign, user=user)
    ids = services.task_caption_ids(assignment.task)
    ratings = {str(cid): {k: rating for k in campaign.criterion_keys} for cid in ids}
    services.judgment_submit(
        user=user,
        task=assignment.task,
        ranking=ranking_of(ids),
        ratings=ratings,
        client_key=uuid.uuid4(),
        duration_ms=duration_ms,
    )
    return assignment.task


def test_progress_counts_done_today_total_and_queue_left(annotators):
    campaign = campaign_with_tasks(images=3, overlap=1)
    alice, bob = annotators(2)
    _judge(campaign, alice, lambda ids: [[c] for c in ids])
    services.task_next(campaign=campaign, user=bob)  # Bob holds one task
    assert selectors.campaign_progress(campaign=campaign, user=alice) == {
        "done_today": 1,
        "done_total": 1,
        "queue_left": 1,
    }


def test_task_view_order_is_a_stable_permutation(annotators):
    campaign = campaign_with_tasks(images=1, captions_per_image=6, captions_per_task=6)
    (user,) = annotators(1)
    assignment = services.task_next(campaign=campaign, user=user)
    first = [c.id for c in selectors.task_view(assignment=assignment).captions]
    again = [c.id for c in selectors.task_view(assignment=assignment).captions]
    assert first == again and sorted(first) == sorted(services.task_caption_ids(assignment.task))
    assert [c.letter for c in selectors.task_view(assignment=assignment).captions] == list("ABCDEF")


def test_annotator_stats_gold_accuracy_loo_agreement_median_time_and_flag(annotators):
    """Three gold tasks (gold = build order). Alice and Bob answer like gold, Mallory reverses it.
    Gold accuracy: 1.0, 1.0, 0.0. Leave-one-out: for Mallory the others' consensus is gold order, tau = -1;
    for Alice the others are Bob (gold) and Mallory (reversed), whose mean ranks are all 2: a full tie,
    so her tau is undefined (NaN), not a made-up number.
    """
    campaign = campaign_with_tasks(images=3, captions_per_image=3, overlap=3, gold_rate=0.0)
    campaign.gold_accuracy_threshold = 0.6
    campaign.save()
    for task in Task.objects.all():
        services.task_gold_set(task=task, ranking=[[c] for c in services.task_caption_ids(task)])
    alice, bob, mallory = annotators(3)
    for _ in range(3):
        _judge(campaign, alice, lambda ids: [[c] for c in ids], duration_ms=2000)
        _judge(campaign, bob, lambda ids: [[c] for c in ids], duration_ms=4000)
        _judge(campaign, mallory, lambda ids: [[c] for c in reversed(ids)], duration_ms=500)

    rows = {row["username"]: row for row in selectors.annotator_stats(campaign=campaign)}

    assert rows["ann0"]["gold_accuracy"] == 1.0 and not rows["ann0"]["flagged"]
    assert rows["ann2"]["gold_accuracy"] == 0.0 and rows["ann2"]["flagged"]
    assert rows["ann2"]["gold_judgments"] == 3
    assert rows["ann2"]["loo_agreement"] == -1.0
    assert rows["ann0"]["median_seconds"] == 2.0 and rows["ann1"]["median_seconds"] == 4.0


def test_low_gold_accuracy_is_not_flagged_before_enough_gold_judgments(annotators):
    campaign = campaign_with_tasks(images=1, captions_per_image=3, overlap=1)
    task = Task.objects.get()
    services.task_gold_set(task=task, ranking=[[c] for c in services.task_caption_ids(task)])
    (user,) = annotators(1)
    _judge(campaign, user, lambda ids: [[c] for c in reversed(ids)])
    (row,) = selectors.annotator_stats(campaign=campaign)
    assert row["gold_accuracy"] == 0.0 and not row["flagged"]


def test_campaign_stats_agreement_alpha_and_daily_counts(annotators):
    campaign = campaign_with_tasks(images=2, captions_per_image=3, overlap=2)
    alice, bob = annotators(2)
    for _ in range(2):
        _judge(campaign, alice, lambda ids: [[c] for c in ids], rating=4)
        _judge(campaign, bob, lambda ids: [[c] for c in ids], rating=4)

    stats = selectors.campaign_stats(campaign=campaign)

    assert stats["tasks_total"] == 2 and stats["tasks_complete"] == 2 and stats["judgments"] == 4
    assert stats["mean_tau"] == 1.0 and stats["mean_w"] == pytest.approx(1.0)
    assert sum(stats["tau_hist_counts"]) == 2
    assert stats["day_values"][-1] == 4
    # Every rating is 4: no variation, so alpha is undefined rather than a made-up number.
    assert all(value != value for value in stats["alpha"].values())


def test_task_agreement_for_two_opposite_rankings(annotators):
    campaign = campaign_with_tasks(images=1, captions_per_image=3, overlap=2)
    alice, bob = annotators(2)
    task = _judge(campaign, alice, lambda ids: [[c] for c in ids])
    _judge(campaign, bob, lambda ids: [[c] for c in reversed(ids)])
    result = selectors.task_agreement(task=task)
    assert result["judgments"] == 2 and result["mean_tau"] == -1.0
    assert Judgment.objects.count() == 2


def test_campaign_stats_of_a_large_campaign_use_a_sample_but_exact_counts(annotators):
    campaign = campaign_with_tasks(images=3, captions_per_image=3, overlap=2)
    alice, bob = annotators(2)
    for _ in range(3):
        _judge(campaign, alice, lambda ids: [[c] for c in ids])
        _judge(campaign, bob, lambda ids: [[c] for c in ids])

    stats = selectors.campaign_stats(campaign=campaign, sample_tasks=2)

    assert stats["sampled"] and stats["tasks_with_overlap"] == 2
    assert stats["judgments"] == 6
    assert [row["judgments"] for row in stats["annotators"]] == [3, 3]
