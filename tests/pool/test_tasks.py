from __future__ import annotations

import pytest

from pool.models import CleaningRun, Image, ImportRun, RunStatus
from pool.tasks import cleaning_run_execute, import_run_execute

pytestmark = pytest.mark.django_db


def test_import_task_runs_a_queued_run(shard):
    run = ImportRun.objects.create(source=str(shard), format="", params={})
    import_run_execute(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.format == "webdataset"
    assert Image.objects.count() == 4


def test_import_task_leaves_a_finished_run_alone(shard):
    run = ImportRun.objects.create(source=str(shard), format="webdataset", status=RunStatus.SUCCEEDED)
    import_run_execute(run.pk)
    assert Image.objects.count() == 0


def test_import_task_records_a_fatal_error_without_raising(tmp_path):
    run = ImportRun.objects.create(source=str(tmp_path / "missing"), format="")
    import_run_execute(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "no such file" in run.error


def test_cleaning_task_uses_the_run_parameters(shard):
    from pool.importing import pool_import

    pool_import(source=str(shard))
    run = CleaningRun.objects.create(params={"min_side": 100, "hamming_radius": 6})
    cleaning_run_execute(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.summary["images"] == {"low_res": 3, "unreadable": 1}


def test_pool_tasks_go_to_the_default_queue():
    from config.celery import app

    route = app.amqp.router.route({}, "pool.tasks.import_run_execute")
    assert route["queue"].name == "default"
