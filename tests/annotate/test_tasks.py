"""Celery tasks of the annotation workflow."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from annotate import services, tasks
from annotate.models import Assignment, Task
from tests.annotate.factories import campaign_with_tasks, pool_create

pytestmark = pytest.mark.django_db


def test_expiry_task_returns_every_timed_out_assignment(eager_celery, annotators):
    campaign = campaign_with_tasks(images=3, overlap=1)
    for user in annotators(3):
        services.task_next(campaign=campaign, user=user)
    Assignment.objects.update(expires_at=timezone.now() - timedelta(seconds=5))

    tasks.assignments_expire.delay()

    assert set(Assignment.objects.values_list("status", flat=True)) == {"expired"}
    assert set(Task.objects.values_list("claim_count", flat=True)) == {0}


def test_expiry_sweep_is_scheduled_every_minute():
    periodic = PeriodicTask.objects.get(task="annotate.assignments_expire")
    assert (periodic.interval.every, periodic.interval.period) == (1, "minutes")


def test_build_task_builds_the_campaign(eager_celery):
    campaign = campaign_with_tasks(images=2)
    pool_create(images=2)
    tasks.campaign_tasks_build.delay(campaign.pk)
    assert campaign.tasks.count() == 4
