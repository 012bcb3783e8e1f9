from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from curate.exports import export_create
from curate.filtering import FilterRule, filter_run_create
from curate.models import Export, FilterRun
from curate.tasks import export_execute, filter_run_execute
from tests.conftest import wait_for
from tests.curate.conftest import ENCODER, VERSION, make_scored_pool


@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_the_filter_and_the_export(celery_worker_process, tmp_path):
    make_scored_pool(30, images=15)
    run = filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=30))
    worker = celery_worker_process(queues="default")
    filter_run_execute.delay(run.pk)
    run = wait_for(
        lambda: FilterRun.objects.filter(pk=run.pk, status="succeeded").first(),
        timeout=180,
        message=f"filter run to succeed; worker log:\n{worker.log()[-2000:]}",
    )
    assert run.kept == 9 and run.considered == 30
    export = export_create(kind="parquet", filter_run=run, out=tmp_path / "out")
    export_execute.delay(export.pk)
    export = wait_for(
        lambda: Export.objects.filter(pk=export.pk, status="succeeded").first(), timeout=120, message="export"
    )
    assert export.done == export.total == 9
    assert pq.read_table(tmp_path / "out" / "pairs.parquet").num_rows == 9
