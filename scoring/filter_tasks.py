"""Celery tasks of filtering and export (default queue: SQL and file work, no GPU)."""

from __future__ import annotations

from celery import shared_task

from scoring.exports import export_execute as export_execute_service
from scoring.filtering import filter_run_execute as filter_run_execute_service
from scoring.models import Export, FilterRun


@shared_task(name="scoring.filter_tasks.filter_run_execute")
def filter_run_execute(run_id: int) -> None:
    """Idempotent: a succeeded run is left as it is; the kept file is replaced atomically."""
    run = FilterRun.objects.filter(pk=run_id).first()
    if run is not None:
        filter_run_execute_service(run=run)


@shared_task(name="scoring.filter_tasks.export_execute")
def export_execute(export_id: int) -> None:
    """Idempotent: a succeeded export is left as it is; each attempt writes into its own temp folder."""
    export = Export.objects.filter(pk=export_id).first()
    if export is not None:
        export_execute_service(export=export)
