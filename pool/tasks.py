"""Celery tasks of the pool (default queue: CPU work). Each takes a run id, re-reads the run and calls
one service; a run that already finished is left alone, so a redelivered task does nothing."""

from __future__ import annotations

import logging

from celery import shared_task

from pool.cleaning_runs import pool_clean
from pool.importing import DEFAULT_BATCH, ImportFailed, pool_import
from pool.models import CleaningRun, ImportRun, RunStatus
from pool.run_health import Heartbeat, run_heartbeat

logger = logging.getLogger(__name__)
RUNNABLE = (RunStatus.QUEUED, RunStatus.RUNNING)


def _runnable(model, run_id: int):
    run = model.objects.filter(pk=run_id, status__in=RUNNABLE).first()
    if run is None:
        logger.info("%s %s is missing or already finished; nothing to do", model.__name__, run_id)
    return run


@shared_task(name="pool.tasks.import_run_execute")
def import_run_execute(run_id: int) -> None:
    # A "running" run is picked up again on purpose: acks_late redelivers a task whose worker died,
    # and the import is idempotent, so finishing it is the right thing to do.
    run = _runnable(ImportRun, run_id)
    if run is None:
        return
    params = run.params or {}
    # Alive from the start, then at each batch: beat's sweep resumes the run if the stamps stop.
    run_heartbeat(model=ImportRun, run_id=run.pk)
    try:
        pool_import(
            source=run.source,
            format=params.get("format") or run.format or None,
            image_column=params.get("image_column") or None,
            caption_columns=params.get("caption_columns") or None,
            caption_source=params.get("caption_source") or "alt",
            batch_size=int(params.get("batch_size") or DEFAULT_BATCH),
            root=params.get("root") or None,
            run=run,
            progress=Heartbeat(model=ImportRun, run_id=run.pk),
        )
    except ImportFailed:
        # Recorded on the run for people to read; retrying cannot fix a missing file or column.
        return


@shared_task(name="pool.tasks.cleaning_run_execute")
def cleaning_run_execute(run_id: int) -> None:
    run = _runnable(CleaningRun, run_id)
    if run is None:
        return
    params = run.params or {}
    run_heartbeat(model=CleaningRun, run_id=run.pk)
    pool_clean(
        min_side=params.get("min_side"),
        hamming_radius=int(params.get("hamming_radius", 6)),
        run=run,
        progress=Heartbeat(model=CleaningRun, run_id=run.pk),
    )
