"""The loop's chain: start, drive, cancel and resume it (when to start one is ``loop.schedule``).

The chain (one ``LoopRun`` row per pass; ``step`` is the last step that finished)::

    retrain -> evaluate -> gate -> rescore -> priorities -> flags -> filter

- ``retrain`` (gpu): a candidate reward model from the campaign's judgments (a ``TrainingRun``).
- ``evaluate``: the candidate's held-out metrics next to CLIPScore's and the active model's.
- ``gate``: promote the candidate only if the gate passes; otherwise the active model stays.
- ``rescore`` (gpu): only after a promotion: a ``ScoringRun`` of the whole pool with the new model;
  the step waits for it (the task re-enqueues itself every few seconds; no result backend needed).
- ``priorities`` (gpu, it may embed): active-learning priorities for the campaign's open tasks.
- ``flags``: curator flags recomputed for the active model (skipped when nothing was promoted).
- ``filter``: a filter run with the rule given at start (optional).

Every step is a Celery task that re-reads the row, runs the step, records it and enqueues the next;
a failed step sets ``status=failed`` and ``error`` and stops there (the active model changes only in
``gate``, so a failed retrain never touches it). ``loop_resume`` starts again after the last finished
step. Only one chain exists at a time: ``loop_start`` and ``loop_resume`` take a database lock, look
for an unfinished ``LoopRun`` and refuse (``LoopBusy``) if there is one. Beat's ``loop_tick`` goes
through the same door, so ticks that piled up while the worker was down find the queued chain and do
nothing.
"""

from __future__ import annotations

import logging
import traceback

from django.db import transaction
from django.utils import timezone

from annotate.models import Campaign
from loop.lock import busy_message, chain_lock, loop_unfinished
from loop.models import LoopRun
from loop.runs import (
    GPU_STEPS,
    INLINE,
    STEPS,
    UNFINISHED,
    LoopBusy,
    LoopError,
    Wait,
    log_line,
    loop_next_step,
    run_children,
)
from loop.steps import STEP_FUNCTIONS
from pool.models import RunStatus
from scoring.active_model import loop_encoder_get

logger = logging.getLogger(__name__)


def loop_start(
    *,
    campaign: Campaign,
    trigger: str = "manual",
    user=None,
    encoder: str | None = None,
    filter_rule: dict | None = None,
    train_config: dict | None = None,
    enqueue: bool = True,
) -> LoopRun:
    """Create a queued chain and enqueue its first step once committed; ``LoopBusy`` if one exists."""
    encoder = encoder or loop_encoder_get()
    with transaction.atomic():
        chain_lock()
        busy = loop_unfinished()
        if busy is not None:
            raise LoopBusy(busy_message(busy))
        run = LoopRun.objects.create(
            campaign=campaign,
            trigger=trigger,
            created_by=user if user is not None and user.is_authenticated else None,
            total=len(STEPS),
            params={
                "encoder": encoder,
                "filter_rule": filter_rule or None,
                "train_config": train_config or None,
            },
        )
        log_line(run, f"queued ({trigger}) for campaign '{campaign}' with encoder {encoder}")
        run.save(update_fields=["log"])
        if enqueue:
            transaction.on_commit(lambda: loop_enqueue(run=run, step=STEPS[0]))
    return run


def loop_enqueue(*, run: LoopRun, step: str, countdown: float | None = None) -> None:
    from loop.tasks import loop_step_task

    loop_step_task.apply_async(
        args=[run.pk, step], queue="gpu" if step in GPU_STEPS else "default", countdown=countdown
    )


def loop_resume(*, run: LoopRun, user=None, enqueue: bool = True) -> LoopRun:
    """Retry a failed or cancelled chain from the step after the last one that finished."""
    with transaction.atomic():
        chain_lock()
        run = LoopRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise LoopError(
                f"Loop run {run.pk} is {run.status}; only a failed or cancelled run can be resumed."
            )
        busy = loop_unfinished()
        if busy is not None:
            raise LoopBusy(busy_message(busy))
        step = loop_next_step(run)
        who = f" by {user.username}" if user is not None and user.is_authenticated else ""
        if step is None:
            run.status, run.finished_at = RunStatus.SUCCEEDED, timezone.now()
            log_line(run, f"resumed{who}: every step had finished")
        else:
            run.status, run.error, run.finished_at = RunStatus.QUEUED, "", None
            log_line(run, f"resumed{who} at step '{step}'")
            if enqueue:
                transaction.on_commit(lambda: loop_enqueue(run=run, step=step))
        run.save(update_fields=["status", "error", "finished_at", "log"])
    return run


def loop_cancel(*, run: LoopRun, user=None) -> LoopRun:
    """Stop a chain: the next step task sees the status and does nothing; child runs are cancelled too."""
    with transaction.atomic():
        run = LoopRun.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            return run
        run.status, run.finished_at = RunStatus.CANCELLED, timezone.now()
        who = f" by {user.username}" if user is not None and user.is_authenticated else ""
        log_line(run, f"cancelled{who} after step '{run.step or '-'}'")
        run.save(update_fields=["status", "finished_at", "log"])
        for child in run_children(run):
            if not child.is_finished:
                type(child).objects.filter(pk=child.pk, status__in=UNFINISHED).update(
                    status=RunStatus.CANCELLED, finished_at=timezone.now()
                )
    return run


def loop_step_execute(*, run_id: int, step: str) -> str | Wait | None:
    """Run one step of a chain. Returns the next step to enqueue, a ``Wait`` or None (stop).

    Safe to run twice: a step that is not the run's next step (already done, or the run was
    cancelled or failed meanwhile) does nothing.
    """
    with transaction.atomic():
        run = LoopRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status not in UNFINISHED or loop_next_step(run) != step:
            return None
        if run.status == RunStatus.QUEUED:
            run.status, run.started_at = RunStatus.RUNNING, run.started_at or timezone.now()
            run.save(update_fields=["status", "started_at"])
    try:
        outcome = STEP_FUNCTIONS[step](run)
    except Exception as exc:  # noqa: BLE001 - any failure stops the chain with the error shown
        logger.exception("loop run %s failed in step %s", run_id, step)
        loop_fail(run_id=run_id, step=step, error=exc)
        return None
    if isinstance(outcome, Wait):
        return outcome
    with transaction.atomic():
        run = LoopRun.objects.select_for_update().get(pk=run_id)
        if run.status not in UNFINISHED:
            return None  # cancelled while the step ran: keep the step's work, start nothing more
        run.step = step
        run.done = STEPS.index(step) + 1
        log_line(run, f"{step}: {outcome or 'done'}")
        following = loop_next_step(run)
        if following is None:
            run.status, run.finished_at = RunStatus.SUCCEEDED, timezone.now()
            log_line(run, "chain finished")
        run.save(update_fields=["step", "done", "log", "status", "finished_at"])
    return following


def loop_fail(*, run_id: int, step: str, error: BaseException | str) -> None:
    text = str(error) if isinstance(error, LoopError | str) else f"{type(error).__name__}: {error}"
    with transaction.atomic():
        run = LoopRun.objects.select_for_update().get(pk=run_id)
        if run.is_finished:
            return
        run.status, run.finished_at = RunStatus.FAILED, timezone.now()
        run.error = f"Step '{step}' failed: {text}"
        log_line(run, run.error)
        if not isinstance(error, LoopError | str):
            tail = "".join(traceback.format_exception(error)[-6:])
            run.log += tail if tail.endswith("\n") else tail + "\n"
        run.save(update_fields=["status", "finished_at", "error", "log"])


def loop_run_inline(*, run: LoopRun, poll_seconds: float = 1.0, timeout: float | None = None) -> LoopRun:
    """Run a chain's remaining steps in this process (``run_loop --sync`` and tests)."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    token = INLINE.set(True)
    try:
        step = loop_next_step(run)
        while step is not None:
            outcome = loop_step_execute(run_id=run.pk, step=step)
            if isinstance(outcome, Wait):
                if deadline is not None and time.monotonic() > deadline:
                    loop_fail(run_id=run.pk, step=step, error=LoopError(f"timed out waiting: {outcome.note}"))
                    break
                time.sleep(poll_seconds)
                continue
            step = outcome
    finally:
        INLINE.reset(token)
    run.refresh_from_db()
    return run
