"""Beat's sweep resumes runs whose worker went silent (killed, machine lost), and only those."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from loop.stale import runs_stale_recover
from pool.models import Caption, CleaningRun, ImportRun, RunStatus
from tests.conftest import image_bytes
from tests.pool.conftest import write_tar
from training.models import TrainingRun

pytestmark = pytest.mark.django_db

LONG_AGO = timedelta(minutes=30)


def _shard(tmp_path):
    members = []
    for i in range(4):
        members += [(f"{i:05d}.jpg", image_bytes(96, 80, seed=i)), (f"{i:05d}.txt", f"photo {i}".encode())]
    return write_tar(tmp_path / "shard-00000.tar", members)


def _running(model, *, heartbeat_ago: timedelta | None, **fields):
    heartbeat = timezone.now() - heartbeat_ago if heartbeat_ago is not None else None
    return model.objects.create(status=RunStatus.RUNNING, heartbeat_at=heartbeat, **fields)


def test_an_import_whose_worker_went_silent_is_resumed_and_finishes(
    tmp_path, eager_celery, django_capture_on_commit_callbacks
):
    run = _running(ImportRun, heartbeat_ago=LONG_AGO, source=str(_shard(tmp_path)), format="webdataset")
    with django_capture_on_commit_callbacks(execute=True):
        lines = runs_stale_recover()
    assert lines and lines[0].startswith(f"import run {run.pk}: resumed")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.stale_resumes == 1
    assert "no heartbeat from its worker for 10 min; resumed." in run.log
    assert Caption.objects.count() == 4


def test_runs_with_a_recent_heartbeat_or_none_are_left_alone(django_capture_on_commit_callbacks):
    alive = _running(ImportRun, heartbeat_ago=timedelta(minutes=1), source="/nowhere")
    in_a_command = _running(CleaningRun, heartbeat_ago=None)  # --sync: no worker, no heartbeat
    finished = ImportRun.objects.create(
        status=RunStatus.SUCCEEDED, source="/nowhere", heartbeat_at=timezone.now() - LONG_AGO
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert runs_stale_recover() == []
    assert callbacks == []
    for run in (alive, in_a_command, finished):
        before = run.heartbeat_at
        run.refresh_from_db()
        assert run.stale_resumes == 0 and run.heartbeat_at == before


def test_a_loop_chains_training_run_is_left_to_the_chain(django_capture_on_commit_callbacks):
    _running(TrainingRun, heartbeat_ago=LONG_AGO, encoder="x", params={"loop_run": 1})
    own = _running(TrainingRun, heartbeat_ago=LONG_AGO, encoder="x", params={})
    with django_capture_on_commit_callbacks(execute=False):
        lines = runs_stale_recover()
    assert lines == [lines[0]] and lines[0].startswith(f"training run {own.pk}: resumed")


def test_a_run_that_keeps_killing_its_worker_is_failed_with_a_message(django_capture_on_commit_callbacks):
    run = _running(ImportRun, heartbeat_ago=LONG_AGO, source="/nowhere", stale_resumes=3)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        runs_stale_recover()
    assert callbacks == []
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and run.finished_at is not None
    assert "stopped answering 4 times" in run.error and "Check the worker logs" in run.error


def test_two_sweeps_resume_a_run_once(django_capture_on_commit_callbacks):
    run = _running(ImportRun, heartbeat_ago=LONG_AGO, source="/nowhere")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        runs_stale_recover()
        runs_stale_recover()
    run.refresh_from_db()
    assert run.stale_resumes == 1 and len(callbacks) == 1


def test_install_schedule_adds_the_sweep_every_minute():
    from django_celery_beat.models import PeriodicTask

    call_command("install_schedule")
    call_command("install_schedule")
    sweep = PeriodicTask.objects.get(task="loop.tasks.runs_stale_recover_task")
    assert sweep.enabled and sweep.interval.every == 1 and sweep.interval.period == "minutes"


def test_a_silent_scoring_run_is_left_alone_while_another_scoring_run_beats(
    django_capture_on_commit_callbacks,
):
    from scoring.models import ScoringRun

    # Its chunks wait in the gpu queue behind the busy run's: silence here means a busy queue.
    waiting = _running(ScoringRun, heartbeat_ago=LONG_AGO, encoder="e")
    _running(ScoringRun, heartbeat_ago=timedelta(seconds=5), encoder="e")
    with django_capture_on_commit_callbacks(execute=False):
        assert runs_stale_recover() == []
    waiting.refresh_from_db()
    assert waiting.stale_resumes == 0
