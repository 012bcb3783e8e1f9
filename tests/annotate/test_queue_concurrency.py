"""Concurrent claims: many annotators asking for work at the same moment never over-fill a task."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
from django.db import connection, connections

from annotate import services
from annotate.models import Assignment, Judgment, Task
from tests.annotate.factories import answer_for, campaign_with_tasks
from tests.conftest import make_user

THREADS = 20


def _claim_and_judge_until_empty(campaign, users, *, submit: bool) -> tuple[list, list]:
    """Every user in its own thread (own DB connection) claims, optionally judges, and repeats."""
    barrier = threading.Barrier(len(users))
    claims: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(user):
        try:
            barrier.wait()
            while True:
                assignment = services.task_next(campaign=campaign, user=user)
                if assignment is None:
                    return
                with lock:
                    claims.append((assignment.task_id, user.pk))
                if not submit:
                    return
                ranking, ratings = answer_for(assignment.task)
                services.judgment_submit(
                    user=user, task=assignment.task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
                )
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return claims, errors


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (row locks with SKIP LOCKED); set DATABASE_URL=postgres://...")


@pytest.mark.postgres
@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_claims_never_exceed_the_overlap(postgres_only):
    campaign = campaign_with_tasks(name="race", images=6, captions_per_image=3, overlap=3)
    users = [make_user(f"racer{i}", None) for i in range(THREADS)]

    claims, errors = _claim_and_judge_until_empty(campaign, users, submit=False)

    assert not errors, errors
    per_task = Counter(task_id for task_id, _ in claims)
    # 6 tasks x overlap 3 = 18 slots for 20 annotators: every slot is taken once, two annotators get none.
    assert max(per_task.values()) <= 3
    assert sum(per_task.values()) == 18
    assert len(set(claims)) == len(claims)
    for task in Task.objects.all():
        assert task.claim_count == Assignment.objects.filter(task=task, status="active").count() == 3


@pytest.mark.postgres
@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_twenty_annotators_working_concurrently_fill_every_task_exactly(postgres_only):
    campaign = campaign_with_tasks(name="race-judge", images=10, captions_per_image=3, overlap=3)
    users = [make_user(f"worker{i}", None) for i in range(THREADS)]

    claims, errors = _claim_and_judge_until_empty(campaign, users, submit=True)

    assert not errors, errors
    per_task = Counter(Judgment.objects.values_list("task_id", flat=True))
    assert per_task == dict.fromkeys(Task.objects.values_list("id", flat=True), 3)
    for task in Task.objects.all():
        assert (task.judgment_count, task.claim_count, task.status) == (3, 0, "complete")


# Not marked system: CI's SQLite pass deselects system tests, and this is the one test of that path.
@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_are_also_safe_on_the_sqlite_fallback():
    if connection.vendor != "sqlite":
        pytest.skip("the PostgreSQL path is covered by the tests above")
    campaign = campaign_with_tasks(name="race-lite", images=3, captions_per_image=3, overlap=2)
    users = [make_user(f"lite{i}", None) for i in range(8)]

    claims, errors = _claim_and_judge_until_empty(campaign, users, submit=False)

    assert not errors, errors
    per_task = Counter(task_id for task_id, _ in claims)
    assert max(per_task.values()) <= 2 and sum(per_task.values()) == 6
