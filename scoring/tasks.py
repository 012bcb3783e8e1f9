"""Celery tasks of pool scoring (routed to the ``gpu`` queue by ``CELERY_TASK_ROUTES``).

Tasks take ids, re-read rows and call one service; all are safe to run twice (see scoring.services).
The ML modules are imported inside the tasks: web processes import this module to enqueue, and never
load torch.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import OperationalError

from pool.run_health import run_heartbeat
from scoring import services
from scoring.encoder_names import EncoderError, is_vlm
from scoring.models import ScoringRun

logger = logging.getLogger(__name__)


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
    if encoder.fingerprint != run.encoder_fingerprint:
        services.scoring_run_fail(
            run_id=run_id,
            error=(
                f"The weights of encoder {run.encoder!r} changed after scoring run {run.pk} was queued "
                f"(fingerprint {run.encoder_fingerprint or '(none)'} -> {encoder.fingerprint or '(none)'}). "
                "Start a new scoring run for the new weights."
            ),
        )
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

    try:
        return inference.scoring_chunk_score(run_id=run_id, chunk_index=chunk_index)
    except OperationalError as exc:  # database busy or restarting: the chunk is idempotent, try again
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=5 * (self.request.retries + 1)) from exc
        services.scoring_run_fail(run_id=run_id, error=f"chunk {chunk_index}: database error: {exc}")
        raise
    except Exception as exc:
        # Anything else would repeat on every retry (a cache folder that is not writable, a broken
        # checkpoint): stop the run and say why; `score_pool --resume` continues once it is fixed.
        logger.exception("scoring run %s chunk %s failed", run_id, chunk_index)
        services.scoring_run_fail(run_id=run_id, error=f"chunk {chunk_index}: {type(exc).__name__}: {exc}")
        raise


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
    if encoder.fingerprint != run.encoder_fingerprint:
        shard_pass.shard_pass_fail(
            run_id=run_id,
            error=(
                f"The weights of encoder {run.encoder!r} changed after shard pass {run.pk} was queued "
                f"(fingerprint {run.encoder_fingerprint or '(none)'} -> {encoder.fingerprint or '(none)'}). "
                "Start a new shard pass for the new weights."
            ),
        )
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

    try:
        return shard_pass.shard_pass_shard(run_id=run_id, shard_id=shard_id)
    except OperationalError as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=5 * (self.request.retries + 1)) from exc
        shard_pass.shard_pass_fail(run_id=run_id, error=f"shard {shard_id}: database error: {exc}")
        raise
    except Exception as exc:
        # A cache folder that is not writable, a broken encoder file: every retry would repeat it. Stop
        # the run and say why; `shard_pass --resume` continues from the shards not done.
        logger.exception("shard pass %s shard %s failed", run_id, shard_id)
        shard_pass.shard_pass_fail(run_id=run_id, error=f"shard {shard_id}: {type(exc).__name__}: {exc}")
        raise


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
def bulk_rescore_shard_execute(self, run_id: int, chunk_index: int) -> str:
    """One shard of a bulk rescore; idempotent (a done chunk does nothing, a rerun replaces its rows)."""
    from scoring import bulk_rescore

    try:
        return bulk_rescore.bulk_rescore_chunk(run_id=run_id, chunk_index=chunk_index)
    except OperationalError as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=5 * (self.request.retries + 1)) from exc
        services.scoring_run_fail(run_id=run_id, error=f"shard {chunk_index}: database error: {exc}")
        raise
    except Exception as exc:
        logger.exception("bulk rescore %s shard %s failed", run_id, chunk_index)
        services.scoring_run_fail(run_id=run_id, error=f"shard {chunk_index}: {type(exc).__name__}: {exc}")
        raise
