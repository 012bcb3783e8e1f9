"""The per-piece tasks (a scoring chunk, a shard of the shard pass, a shard of a bulk rescore): a
database error is retried and then fails the run; any other error fails the run at once, saying which
piece and why. The work each task calls is replaced by one that raises; the task's handling is real."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from pool.models import RunStatus
from scoring import bulk_rescore, inference, shard_pass, tasks
from scoring.models import ScoringRun, ShardPassRun

pytestmark = pytest.mark.django_db

CASES = [
    (tasks.scoring_chunk_execute, inference, "scoring_chunk_score", ScoringRun, "chunk 7"),
    (tasks.shard_pass_shard_execute, shard_pass, "shard_pass_shard", ShardPassRun, "shard 7"),
    (tasks.bulk_rescore_shard_execute, bulk_rescore, "bulk_rescore_chunk", ScoringRun, "shard 7"),
]


def _run(model):
    return model.objects.create(encoder="open_clip:test", status=RunStatus.RUNNING)


@pytest.mark.parametrize(
    ("task", "module", "work", "model", "piece"), CASES, ids=lambda c: getattr(c, "name", None)
)
def test_an_error_that_would_repeat_fails_the_run_at_once(monkeypatch, task, module, work, model, piece):
    run = _run(model)

    def broken(**kwargs):
        raise RuntimeError("cache folder not writable")

    monkeypatch.setattr(module, work, broken)
    result = task.apply(args=(run.pk, 7))
    assert isinstance(result.result, RuntimeError)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error == f"{piece}: RuntimeError: cache folder not writable"


@pytest.mark.parametrize(
    ("task", "module", "work", "model", "piece"), CASES, ids=lambda c: getattr(c, "name", None)
)
def test_a_database_error_is_retried_then_fails_the_run(monkeypatch, task, module, work, model, piece):
    run = _run(model)
    attempts = []

    def busy(**kwargs):
        attempts.append(1)  # the run is still going while retries remain
        assert model.objects.get(pk=run.pk).status == RunStatus.RUNNING
        raise OperationalError("server closed the connection")

    monkeypatch.setattr(module, work, busy)
    result = task.apply(args=(run.pk, 7))  # eager: Celery runs each retry in place
    assert isinstance(result.result, OperationalError)
    assert len(attempts) == task.max_retries + 1
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error == f"{piece}: database error: server closed the connection"


def test_weights_changed_message_names_the_run_kind():
    run = ScoringRun(pk=3, encoder="open_clip:x", encoder_fingerprint="aaaa")
    assert tasks._weights_changed("scoring run", run, "aaaa") is None
    message = tasks._weights_changed("scoring run", run, "bbbb")
    assert "changed after scoring run 3" in message and "aaaa -> bbbb" in message
    assert message.endswith("Start a new scoring run for the new weights.")
