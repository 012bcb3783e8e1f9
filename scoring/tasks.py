"""Celery tasks of pool scoring (routed to the ``gpu`` queue by ``CELERY_TASK_ROUTES``).

Tasks take ids, re-read rows and call one service; all are safe to run twice (see scoring.services).
The ML modules are imported inside the tasks: web processes import this module to enqueue, and never
load torch.
"""

from __future__ import annotations

import logging
from functools import partial

from celery import shared_task
from django.db import OperationalError

from pool.run_health import run_heartbeat
from scoring import services
from scoring.encoder_names import EncoderError, is_vlm
from scoring.models import ScoringRun

logger = logging.getLogger(__name__)


def _piece_run(task, work, *, fail, piece: str, log: str):
    """Run one idempotent piece of a run (a chunk, a shard) inside a bound task; ``fail(error=...)``
    fails the run.

    A database error (busy, restarting) is retried with backoff, then fails the run. Anything else
    would repeat on every retry (a cache folder that is not writable, a broken checkpoint or encoder
    file): it is logged and fails the run at once with the reason; a resume continues once it is fixed.
    """
    try:
        return work()
    except OperationalError as exc:
        if task.request.retries < task.max_retries:
            raise task.retry(exc=exc, countdown=5 * (task.request.retries + 1)) from exc
        fail(error=f"{piece}: database error: {exc}")
        raise
    except Exception as exc:
        logger.exception("%s failed", log)
        fail(error=f"{piece}: {type(exc).__name__}: {exc}")
        raise


def _weights_changed(kind: str, run, fingerprint: str) -> str | None:
    """Why a queued run cannot go on when its encoder's weights changed since it was queued, or None."""
    if fingerprint == run.encoder_fingerprint:
        return None
    return (
        f"The weights of encoder {run.encoder!r} changed after {kind} {run.pk} was queued "
        f"(fingerprint {run.encoder_fingerprint or '(none)'} -> {fingerprint or '(none)'}). "
        f"Start a new {kind} for the new weights."
    )


@shared_task(bind=True, max_retries=3, acks_late=True)
def scoring_run_execute(self, run_id: int) -> None:
    """Check the encoder, plan the run into chunks and fan them out (one task per chunk)."""
    run = ScoringRun.objects.get(pk=run_id)
    if run.status in services.FINISHED:
        return
    from scoring.inference import scorer_load

    try:
        # Load before planning: a bad name or weights file fails the run with one clear error.
        encoder = scorer_load(run.encoder)
    except EncoderError as exc:
        services.scoring_run_fail(run_id=run_id, error=str(exc))
        return
    if is_vlm(run.encoder):
        services.judge_identity_record(run=run, fingerprint=encoder.fingerprint)
    if changed := _weights_changed("scoring run", run, encoder.fingerprint):
        services.scoring_run_fail(run_id=run_id, error=changed)
        return
    run_heartbeat(model=ScoringRun, run_id=run_id)
    try:
        pending = services.scoring_run_plan(run=run)
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=5) from exc
    for index in pending:
        scoring_chunk_execute.delay(run_id, index)


@shared_task(bind=True, max_retries=3, acks_late=True)
def scoring_chunk_execute(self, run_id: int, chunk_index: int) -> str:
    from scoring import inference

    return _piece_run(
        self,
        lambda: inference.scoring_chunk_score(run_id=run_id, chunk_index=chunk_index),
        fail=partial(services.scoring_run_fail, run_id=run_id),
        piece=f"chunk {chunk_index}",
        log=f"scoring run {run_id} chunk {chunk_index}",
    )


@shared_task(acks_late=True)
def scoring_run_resume(run_id: int) -> list[int]:
    """Re-enqueue the chunks of a run that have no committed scores (e.g. after a killed worker)."""
    run = ScoringRun.objects.get(pk=run_id)
    return services.scoring_run_resume(run=run)


# --- the shard pass (scoring.shard_pass) ---------------------------------------------------------


@shared_task(bind=True, max_retries=3, acks_late=True)
def shard_pass_run_execute(self, run_id: int) -> None:
    """Check the encoder, mark the run running and fan out one task per pending shard."""
    from scoring import shard_pass
    from scoring.models import ShardPassRun

    run = ShardPassRun.objects.get(pk=run_id)
    if run.status in shard_pass.FINISHED:
        return
    from scoring.encoders import encoder_load

    try:
        encoder = encoder_load(run.encoder)
    except EncoderError as exc:
        shard_pass.shard_pass_fail(run_id=run_id, error=str(exc))
        return
    if changed := _weights_changed("shard pass", run, encoder.fingerprint):
        shard_pass.shard_pass_fail(run_id=run_id, error=changed)
        return
    try:
        pending = shard_pass.shard_pass_begin(run=run)
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=5) from exc
    for shard_id in pending:
        shard_pass_shard_execute.delay(run_id, shard_id)


@shared_task(bind=True, max_retries=3, acks_late=True)
def shard_pass_shard_execute(self, run_id: int, shard_id: int) -> str:
    """One pool shard of a shard pass: idempotent (a shard done in this run is skipped)."""
    from scoring import shard_pass

    return _piece_run(
        self,
        lambda: shard_pass.shard_pass_shard(run_id=run_id, shard_id=shard_id),
        fail=partial(shard_pass.shard_pass_fail, run_id=run_id),
        piece=f"shard {shard_id}",
        log=f"shard pass {run_id} shard {shard_id}",
    )


@shared_task(acks_late=True)
def shard_pass_resume_task(run_id: int) -> list[int]:
    """Re-enqueue the shards of a run with nothing committed (e.g. after a killed worker)."""
    from scoring import shard_pass
    from scoring.models import ShardPassRun

    return shard_pass.shard_pass_resume(run=ShardPassRun.objects.get(pk=run_id))


@shared_task(bind=True, max_retries=3, acks_late=True)
def bulk_rescore_execute(self, run_id: int) -> None:
    """Plan a bulk rescore (one chunk per shard with features, ``scoring.bulk_rescore``) and fan out."""
    from scoring import bulk_rescore

    run = ScoringRun.objects.get(pk=run_id)
    if run.status in services.FINISHED:
        return
    run_heartbeat(model=ScoringRun, run_id=run_id)
    try:
        pending = bulk_rescore.bulk_rescore_plan(run=run)
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=5) from exc
    for index in pending:
        bulk_rescore_shard_execute.delay(run_id, index)
    # The exact total (one count of the usable pairs) while the chunks already run.
    bulk_rescore.bulk_rescore_total_count(run=run)


@shared_task(bind=True, max_retries=3, acks_late=True)
def bulk_rescore_finish_task(self, run_id: int) -> str:
    """Index and attach a bulk rescore's load table and finish the run (idempotent)."""
    from scoring import bulk_rescore

    return _piece_run(
        self,
        lambda: bulk_rescore.bulk_rescore_finish(run_id=run_id).status,
        fail=partial(services.scoring_run_fail, run_id=run_id),
        piece="finish",
        log=f"bulk rescore {run_id} finish",
    )


@shared_task(bind=True, max_retries=3, acks_late=True)
def bulk_rescore_shard_execute(self, run_id: int, chunk_index: int) -> str:
    """One shard of a bulk rescore; idempotent (a done chunk does nothing, a rerun replaces its rows)."""
    from scoring import bulk_rescore

    return _piece_run(
        self,
        lambda: bulk_rescore.bulk_rescore_chunk(run_id=run_id, chunk_index=chunk_index),
        fail=partial(services.scoring_run_fail, run_id=run_id),
        piece=f"shard {chunk_index}",
        log=f"bulk rescore {run_id} shard {chunk_index}",
    )
