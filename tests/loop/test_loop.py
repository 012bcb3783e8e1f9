"""The loop's lock, tick and resume semantics (loop/), without running the heavy steps."""

from __future__ import annotations

import os
import threading

import pytest
from django.core.management import call_command
from django.db import connection

from annotate.models import Campaign, Judgment
from loop.models import LoopRun
from loop.runs import LoopBusy, LoopError, loop_next_step
from loop.schedule import loop_should_run, loop_tick
from loop.services import loop_cancel, loop_resume, loop_start, loop_step_execute
from pool.models import RunStatus


def test_second_start_while_one_runs_is_refused(campaign):
    first = loop_start(campaign=campaign, enqueue=False)
    with pytest.raises(LoopBusy, match=f"Loop run {first.pk}"):
        loop_start(campaign=campaign, enqueue=False)
    assert LoopRun.objects.count() == 1


def test_start_is_allowed_again_once_the_chain_finished(campaign):
    first = loop_start(campaign=campaign, enqueue=False)
    LoopRun.objects.filter(pk=first.pk).update(status=RunStatus.SUCCEEDED)
    second = loop_start(campaign=campaign, enqueue=False)
    assert second.pk != first.pk


def test_tick_while_a_chain_is_queued_does_nothing(campaign, settings):
    campaign.selection_mix = {"retrain_after": 1}
    campaign.save()
    _judge_all(campaign)
    run = loop_start(campaign=campaign, enqueue=False)
    for _ in range(3):  # ticks that piled up while the worker was down
        assert loop_tick().startswith("busy")
    assert list(LoopRun.objects.values_list("pk", flat=True)) == [run.pk]


def test_tick_starts_one_chain_when_enough_new_judgments(campaign, django_capture_on_commit_callbacks):
    campaign.selection_mix = {"retrain_after": 3}
    campaign.save()
    assert loop_tick().startswith("nothing to do")
    _judge_all(campaign, limit=3)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        message = loop_tick()
    assert message.startswith("started")
    run = LoopRun.objects.get()
    assert run.trigger == "beat" and run.status == RunStatus.QUEUED and len(callbacks) == 1


def test_should_run_counts_judgments_since_the_last_model(campaign):
    campaign.selection_mix = {"retrain_after": 2}
    campaign.save()
    should, reason = loop_should_run(campaign=campaign)
    assert not should and "0 new judgments" in reason
    _judge_all(campaign, limit=2)
    should, reason = loop_should_run(campaign=campaign)
    assert should and "2 new judgments" in reason


def test_inactive_campaign_never_retrains(campaign):
    Campaign.objects.filter(pk=campaign.pk).update(is_active=False)
    campaign.refresh_from_db()
    assert loop_should_run(campaign=campaign)[0] is False


def test_failed_step_stops_the_chain_with_its_error(campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    LoopRun.objects.filter(pk=run.pk).update(step="retrain")  # evaluate is next; there is no candidate
    assert loop_step_execute(run_id=run.pk, step="evaluate") is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "Step 'evaluate' failed" in run.error and "no candidate" in run.error
    assert run.step == "retrain"


def test_step_that_is_not_next_does_nothing(campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    LoopRun.objects.filter(pk=run.pk).update(step="gate")
    assert loop_step_execute(run_id=run.pk, step="retrain") is None  # a redelivered message
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.step == "gate"


def test_resume_continues_after_the_last_finished_step(campaign, django_capture_on_commit_callbacks):
    run = loop_start(campaign=campaign, enqueue=False)
    LoopRun.objects.filter(pk=run.pk).update(step="gate", status=RunStatus.FAILED, error="boom")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        resumed = loop_resume(run=run)
    assert resumed.status == RunStatus.QUEUED and resumed.error == ""
    assert loop_next_step(resumed) == "rescore"
    assert len(callbacks) == 1
    assert "resumed at step 'rescore'" in resumed.log


def test_resume_is_refused_while_another_chain_runs(campaign):
    old = loop_start(campaign=campaign, enqueue=False)
    LoopRun.objects.filter(pk=old.pk).update(status=RunStatus.FAILED)
    loop_start(campaign=campaign, enqueue=False)
    with pytest.raises(LoopBusy):
        loop_resume(run=old)


def test_resume_refuses_a_run_that_did_not_fail(campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    with pytest.raises(LoopError, match="only a failed or cancelled run"):
        loop_resume(run=run)


def test_cancel_releases_the_lock_and_the_next_step_does_nothing(campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    loop_cancel(run=run)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert loop_step_execute(run_id=run.pk, step="retrain") is None
    loop_start(campaign=campaign, enqueue=False)  # not refused


def test_skipped_steps_record_progress(campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    LoopRun.objects.filter(pk=run.pk).update(step="gate", params={**run.params, "promoted": False})
    assert loop_step_execute(run_id=run.pk, step="rescore") == "priorities"
    run.refresh_from_db()
    assert run.step == "rescore" and run.done == 4 and "skipped" in run.log


@pytest.mark.postgres
@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="advisory locks: needs PostgreSQL"
)
# serialized_rollback: the flush after a transactional test would otherwise drop the role groups
# that the migrations created, for every test that runs after this one.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_concurrent_starts_make_exactly_one_chain():
    from tests.annotate.factories import campaign_with_tasks

    campaign = campaign_with_tasks(name="Race", images=1, captions_per_image=2)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def start():
        barrier.wait()
        try:
            loop_start(campaign=campaign, enqueue=False)
            outcomes.append("started")
        except LoopBusy:
            outcomes.append("busy")
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["busy", "busy", "busy", "started"]
    assert LoopRun.objects.count() == 1


def test_install_schedule_is_idempotent_and_keeps_admin_changes(db):
    from django_celery_beat.models import PeriodicTask

    call_command("install_schedule")
    call_command("install_schedule")
    task = PeriodicTask.objects.get(name="loupe: loop tick")
    assert task.task == "loop.tasks.loop_tick_task"
    assert task.interval.every == 10 and task.expire_seconds and task.enabled
    task.enabled = False
    task.save()
    call_command("install_schedule")
    task.refresh_from_db()
    assert not task.enabled and PeriodicTask.objects.filter(name="loupe: loop tick").count() == 1


def _judge_all(campaign, limit: int | None = None) -> int:
    """Submit judgments through the real services with distinct annotators."""
    from annotate.services import judgment_submit, task_next
    from tests.annotate.factories import answer_for
    from tests.conftest import make_user

    made = 0
    for index in range(campaign.overlap):
        user = make_user(f"judge{index}-{Judgment.objects.count()}", "annotator")
        while limit is None or made < limit:
            assignment = task_next(campaign=campaign, user=user)
            if assignment is None:
                break
            ranking, ratings = answer_for(assignment.task)
            judgment_submit(
                user=user, task=assignment.task, ranking=ranking, ratings=ratings, client_key=_key()
            )
            made += 1
    return made


def _key():
    import uuid

    return uuid.uuid4()
