"""The annotation services: campaigns, the task queue, judgments and their bad inputs."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from annotate import services
from annotate.models import Assignment, AssignmentStatus, Judgment, Task, TaskCaption, TaskStatus
from annotate.services import JudgmentError
from tests.annotate.factories import (
    answer_for,
    campaign_with_tasks,
    caption_create,
    image_create,
    pool_create,
)

pytestmark = pytest.mark.django_db


# --- campaigns and task building -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"captions_per_task": 1}, "between 2 and 8"),
        ({"captions_per_task": 9}, "between 2 and 8"),
        ({"overlap": 0}, "at least 1"),
        ({"gold_rate": 1.0}, "below 1"),
        ({"gold_rate": -0.1}, "at least 0"),
        ({"criteria": [{"key": "a", "label": "A", "anchors": ["1", "2", "3"]}]}, "five anchor"),
        ({"criteria": [{"label": "A", "anchors": list("12345")}]}, "needs a key"),
    ],
)
def test_campaign_create_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        services.campaign_create(name="c", **kwargs)


def test_campaign_create_uses_the_four_default_criteria():
    campaign = services.campaign_create(name="c")
    assert campaign.criterion_keys == ["accuracy", "completeness", "vividness", "context_relevance"]


def test_tasks_build_takes_usable_images_with_two_usable_captions_only():
    good = image_create()
    for k in range(5):
        caption_create(image=good, text=f"good caption {k}")
    one_caption = image_create()
    caption_create(image=one_caption, text="lonely")
    caption_create(image=one_caption, text="rejected one", status="empty")
    low_res = image_create(status="low_res")
    caption_create(image=low_res, text="x1")
    caption_create(image=low_res, text="x2")
    campaign = services.campaign_create(name="c", captions_per_task=4)

    assert services.campaign_tasks_build(campaign=campaign) == 1
    task = Task.objects.get(campaign=campaign)
    assert task.image == good
    assert TaskCaption.objects.filter(task=task).count() == 4


def test_tasks_build_is_idempotent():
    pool_create(images=3)
    campaign = services.campaign_create(name="c")
    assert services.campaign_tasks_build(campaign=campaign) == 3
    assert services.campaign_tasks_build(campaign=campaign) == 0
    assert Task.objects.filter(campaign=campaign).count() == 3


def test_tasks_build_respects_the_pool_filter_and_limit():
    pool_create(images=2, source="web")
    pool_create(images=3, source="studio")
    campaign = services.campaign_create(name="c", pool_filter={"image_sources": ["studio"]})
    assert services.campaign_tasks_build(campaign=campaign, limit=2) == 2
    assert services.campaign_tasks_build(campaign=campaign) == 1
    assert set(Task.objects.values_list("image__source", flat=True)) == {"studio"}


def test_task_for_rewrite_compares_rewrite_with_original_and_is_idempotent():
    campaign = campaign_with_tasks(images=1, captions_per_image=5, captions_per_task=3)
    image = Task.objects.get().image
    original = image.captions.order_by("id").first()
    rewrite = caption_create(
        image=image, text="A rewritten, better caption", source="rewrite", parent=original
    )

    task = services.campaign_task_for_rewrite(
        campaign=campaign, original_caption=original, rewritten_caption=rewrite
    )
    again = services.campaign_task_for_rewrite(
        campaign=campaign, original_caption=original, rewritten_caption=rewrite
    )

    ids = services.task_caption_ids(task)
    assert again.pk == task.pk
    assert ids[:2] == [rewrite.id, original.id] and len(ids) == 3
    assert task.priority > Task.objects.exclude(pk=task.pk).get().priority


# --- the queue -------------------------------------------------------------------------------------


def test_task_next_returns_the_same_active_assignment_until_submitted(annotators):
    campaign = campaign_with_tasks(images=2)
    (user,) = annotators(1)
    first = services.task_next(campaign=campaign, user=user)
    assert services.task_next(campaign=campaign, user=user).pk == first.pk


def test_task_next_follows_priority(annotators):
    campaign = campaign_with_tasks(images=3)
    (user,) = annotators(1)
    top = Task.objects.order_by("id")[1]
    Task.objects.filter(pk=top.pk).update(priority=5.0)
    assert services.task_next(campaign=campaign, user=user).task_id == top.pk


def test_overlap_is_respected(annotators):
    campaign = campaign_with_tasks(images=1, overlap=2)
    users = annotators(3)
    a = services.task_next(campaign=campaign, user=users[0])
    b = services.task_next(campaign=campaign, user=users[1])
    assert a.task_id == b.task_id
    assert services.task_next(campaign=campaign, user=users[2]) is None


def test_a_user_never_gets_a_task_twice(annotators):
    campaign = campaign_with_tasks(images=2, overlap=3)
    (user,) = annotators(1)
    seen = []
    while (assignment := services.task_next(campaign=campaign, user=user)) is not None:
        seen.append(assignment.task_id)
        ranking, ratings = answer_for(assignment.task)
        services.judgment_submit(
            user=user, task=assignment.task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    assert sorted(seen) == sorted(Task.objects.values_list("id", flat=True))


def test_skipped_task_is_not_offered_again_and_frees_its_slot(annotators):
    campaign = campaign_with_tasks(images=1, overlap=1)
    alice, bob = annotators(2)
    assignment = services.task_next(campaign=campaign, user=alice)
    services.assignment_skip(user=alice, task=assignment.task, reason="Image does not load")

    assert services.task_next(campaign=campaign, user=alice) is None
    assert services.task_next(campaign=campaign, user=bob).task_id == assignment.task_id
    assert Assignment.objects.get(user=alice).skip_reason == "Image does not load"


def test_expired_assignment_returns_the_task_to_the_queue(annotators):
    campaign = campaign_with_tasks(images=1, overlap=1)
    alice, bob = annotators(2)
    held = services.task_next(campaign=campaign, user=alice)
    assert services.task_next(campaign=campaign, user=bob) is None

    Assignment.objects.filter(pk=held.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert services.task_next(campaign=campaign, user=bob).task_id == held.task_id
    assert Assignment.objects.get(pk=held.pk).status == AssignmentStatus.EXPIRED
    assert Task.objects.get(pk=held.task_id).claim_count == 1


def test_periodic_expiry_counts_what_it_expired(annotators):
    campaign = campaign_with_tasks(images=2, overlap=1)
    alice, bob = annotators(2)
    for user in (alice, bob):
        services.task_next(campaign=campaign, user=user)
    Assignment.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    assert services.assignments_expire() == 2
    assert services.assignments_expire() == 0
    assert list(Task.objects.values_list("claim_count", flat=True)) == [0, 0]


def test_gold_tasks_are_mixed_in_at_the_gold_rate(annotators):
    campaign = campaign_with_tasks(images=40, captions_per_image=2, overlap=1, gold_rate=0.25)
    for task in Task.objects.order_by("id")[:20]:
        services.task_gold_set(task=task, ranking=[[cid] for cid in services.task_caption_ids(task)])
    (user,) = annotators(1)
    rng = random.Random(7)
    gold_seen = 0
    for _ in range(20):
        assignment = services.task_next(campaign=campaign, user=user, rng=rng)
        gold_seen += assignment.task.is_gold
        services.assignment_skip(user=user, task=assignment.task, reason="test")
    # 20 draws at rate 0.25 with this seed (random.Random(7)): exactly 8 are gold tasks.
    assert gold_seen == 8


def test_gold_tasks_are_not_capped_by_overlap(annotators):
    campaign = campaign_with_tasks(images=1, captions_per_image=3, overlap=1, gold_rate=0.0)
    task = Task.objects.get()
    services.task_gold_set(task=task, ranking=[[cid] for cid in services.task_caption_ids(task)])
    users = annotators(3)
    for user in users:
        assignment = services.task_next(campaign=campaign, user=user)
        assert assignment is not None and assignment.task_id == task.pk
        ranking, ratings = answer_for(task)
        services.judgment_submit(
            user=user, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    task.refresh_from_db()
    assert task.judgment_count == 3 and task.status == TaskStatus.OPEN


def test_gold_ranking_must_cover_the_task():
    campaign_with_tasks(images=1)
    task = Task.objects.get()
    with pytest.raises(ValidationError, match="leaves out"):
        services.task_gold_set(task=task, ranking=[[services.task_caption_ids(task)[0]]])


# --- judgments -------------------------------------------------------------------------------------


def _claimed(annotators, **kwargs):
    campaign = campaign_with_tasks(images=2, **kwargs)
    (user,) = annotators(1)
    assignment = services.task_next(campaign=campaign, user=user)
    return campaign, user, assignment.task


def test_submit_stores_the_judgment_and_updates_counters(annotators):
    _, user, task = _claimed(annotators, overlap=1)
    ranking, ratings = answer_for(task, tie_first_two=True, rating=4)
    judgment = services.judgment_submit(
        user=user, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4(), duration_ms=1234
    )
    task.refresh_from_db()
    assert judgment.ranking == ranking and judgment.ratings == ratings and judgment.duration_ms == 1234
    assert (task.judgment_count, task.claim_count, task.status) == (1, 0, TaskStatus.COMPLETE)
    assert Assignment.objects.get(user=user, task=task).status == AssignmentStatus.SUBMITTED


def test_same_client_key_twice_gives_one_judgment(annotators):
    _, user, task = _claimed(annotators)
    ranking, ratings = answer_for(task)
    key = uuid.uuid4()
    first = services.judgment_submit(user=user, task=task, ranking=ranking, ratings=ratings, client_key=key)
    second = services.judgment_submit(
        user=user, task=task, ranking=ranking, ratings=ratings, client_key=str(key)
    )
    assert first.pk == second.pk
    assert Judgment.objects.count() == 1
    task.refresh_from_db()
    assert task.judgment_count == 1


def test_second_submit_with_a_new_key_is_refused(annotators):
    _, user, task = _claimed(annotators)
    ranking, ratings = answer_for(task)
    services.judgment_submit(user=user, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4())
    with pytest.raises(JudgmentError, match="already submitted") as error:
        services.judgment_submit(
            user=user, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    assert error.value.status == 409
    assert Judgment.objects.count() == 1


def _bad(task, kind):
    ranking, ratings = answer_for(task)
    ids = services.task_caption_ids(task)
    if kind == "omits":
        ranking = ranking[:-1]
    elif kind == "repeats":
        ranking = ranking + [[ids[0]]]
    elif kind == "foreign":
        other = TaskCaption.objects.exclude(task=task).first().caption_id
        ranking = ranking[:-1] + [[other]]
    elif kind == "rating_high":
        ratings[str(ids[0])]["accuracy"] = 6
    elif kind == "rating_zero":
        ratings[str(ids[1])]["vividness"] = 0
    elif kind == "missing_criterion":
        del ratings[str(ids[0])]["completeness"]
    elif kind == "missing_caption_ratings":
        del ratings[str(ids[2])]
    elif kind == "empty":
        ranking = []
    return ranking, ratings


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("omits", "leaves out"),
        ("repeats", "more than once"),
        ("foreign", "not one of this task's captions"),
        ("rating_high", "from 1 to 5, not 6"),
        ("rating_zero", "from 1 to 5, not 0"),
        ("missing_criterion", "Rate Completeness"),
        ("missing_caption_ratings", "no ratings yet"),
        ("empty", "ranking is empty"),
    ],
)
def test_bad_answers_are_refused_with_a_readable_message_and_store_nothing(annotators, kind, message):
    _, user, task = _claimed(annotators)
    ranking, ratings = _bad(task, kind)
    with pytest.raises(JudgmentError, match=message) as error:
        services.judgment_submit(
            user=user, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    assert error.value.status == 400
    assert Judgment.objects.count() == 0
    task.refresh_from_db()
    assert task.judgment_count == 0 and task.claim_count == 1


def test_submit_after_expiry_is_refused(annotators):
    _, user, task = _claimed(annotators)
    Assignment.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    ranking, ratings = answer_for(task)
    with pytest.raises(JudgmentError, match="time on this task ran out") as error:
        services.judgment_submit(
            user=user, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    assert error.value.status == 410
    assert Judgment.objects.count() == 0


def test_submit_for_someone_elses_task_is_refused(annotators):
    campaign = campaign_with_tasks(images=1)
    alice, mallory = annotators(2)
    task = services.task_next(campaign=campaign, user=alice).task
    # Mallory has no assignment of her own: she is not allowed to answer for Alice.
    ranking, ratings = answer_for(task)
    with pytest.raises(JudgmentError, match="assigned to another annotator") as error:
        services.judgment_submit(
            user=mallory, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    assert error.value.status == 403
    assert Judgment.objects.count() == 0


def test_client_key_of_another_task_is_refused(annotators):
    campaign = campaign_with_tasks(images=2, overlap=1)
    (user,) = annotators(1)
    first = services.task_next(campaign=campaign, user=user).task
    ranking, ratings = answer_for(first)
    key = uuid.uuid4()
    services.judgment_submit(user=user, task=first, ranking=ranking, ratings=ratings, client_key=key)
    second = services.task_next(campaign=campaign, user=user).task
    ranking, ratings = answer_for(second)
    with pytest.raises(JudgmentError, match="different task"):
        services.judgment_submit(user=user, task=second, ranking=ranking, ratings=ratings, client_key=key)
    assert Judgment.objects.count() == 1


def test_ranking_from_tier_numbers_groups_equal_numbers():
    assert services.ranking_from_tier_numbers({7: 1, 9: 3, 3: 3, 4: 2}) == [[7], [4], [3, 9]]


def test_a_user_can_reclaim_a_task_they_let_expire(annotators):
    campaign = campaign_with_tasks(images=1, overlap=1)
    (alice,) = annotators(1)
    held = services.task_next(campaign=campaign, user=alice)
    Assignment.objects.filter(pk=held.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    again = services.task_next(campaign=campaign, user=alice)

    assert again.pk == held.pk and again.status == AssignmentStatus.ACTIVE
    assert again.expires_at > timezone.now()
    assert Task.objects.get().claim_count == 1
