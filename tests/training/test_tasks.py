"""The gpu-queue task: trains a queued run once, leaves finished runs alone, waits when busy."""

from __future__ import annotations

import contextlib
from dataclasses import asdict

import pytest
from django.db import connection, connections

from pool.models import RunStatus
from training.candidates import _LOCK_KEY, TrainingBusy, training_lock
from training.config import TrainConfig
from training.models import RewardModel, TrainingRun
from training.tasks import training_run_execute

ENC = "offline:effnet-minilm"
QUICK = asdict(TrainConfig(epochs=2, hidden=8, n_heads=2))


def _run(judged, **params) -> TrainingRun:
    return TrainingRun.objects.create(
        campaign=judged.campaign, encoder=ENC, params={"config": QUICK, **params}
    )


def test_task_trains_a_queued_run_and_a_second_delivery_does_nothing(judged):
    run = _run(judged)
    training_run_execute.apply(args=[run.pk])
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.model is not None
    training_run_execute.apply(args=[run.pk])
    assert RewardModel.objects.count() == 1


def test_task_with_promote_if_better_runs_the_gate(judged):
    run = _run(judged, promote_if_better=True)
    training_run_execute.apply(args=[run.pk])
    model = RewardModel.objects.get()
    actions = list(model.events.order_by("created_at", "id").values_list("action", flat=True))
    # QUICK's two epochs do not beat CLIPScore on this seed's held-out pairs: the gate refuses, and the
    # task promotes nothing.
    assert actions == ["trained", "gate_refused"]
    assert model.status == "candidate"


def test_task_finishes_a_run_registered_before_its_worker_died(judged):
    run = _run(judged)
    training_run_execute.apply(args=[run.pk])
    TrainingRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING)
    training_run_execute.apply(args=[run.pk])
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and RewardModel.objects.count() == 1


def test_task_leaves_the_run_queued_while_another_training_runs(judged):
    run = _run(judged)
    # Called directly (not from a worker), Celery's retry raises the reason instead of rescheduling.
    with _lock_held_elsewhere(), pytest.raises(TrainingBusy):
        training_run_execute(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and "another training" in run.log
    assert not RewardModel.objects.exists()


@contextlib.contextmanager
def _lock_held_elsewhere():
    """The training lock held by someone else: another session on PostgreSQL (an advisory lock is
    re-entrant within one session), another open file on SQLite."""
    if connection.vendor != "postgresql":
        with training_lock():
            yield
        return
    other = connections.create_connection("default")
    with other.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
    try:
        yield
    finally:
        other.close()
