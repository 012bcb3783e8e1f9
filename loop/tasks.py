"""Celery tasks of the loop (default queue; the gpu steps are sent to the gpu queue by ``loop_enqueue``).

No result backend exists, so the chain is not a Celery chain: each step's task enqueues the next
one with the LoopRun's id. Tasks re-read the row and do nothing when the step is already done or the
run was cancelled, so a redelivered message (acks_late) is harmless.
"""

from __future__ import annotations

import logging

from celery import shared_task

from loop.models import LoopRun
from loop.runs import POLL_SECONDS, Wait
from loop.schedule import loop_tick
from loop.services import loop_enqueue, loop_step_execute

logger = logging.getLogger(__name__)

# A tick is worth running only near its own schedule: one that waited in the queue while the worker
# was down would only find the queued chain (or start a stale decision). install_schedule sets the
# same expiry on the PeriodicTask, so the broker drops old ticks before a worker even sees them.
TICK_EXPIRES_SECONDS = 300


@shared_task(name="loop.tasks.loop_tick_task", ignore_result=True, expires=TICK_EXPIRES_SECONDS)
def loop_tick_task(filter_rule: dict | None = None) -> str:
    message = loop_tick(filter_rule=filter_rule)
    logger.info("loop tick: %s", message)
    return message


@shared_task(name="loop.tasks.runs_stale_recover_task", ignore_result=True, expires=TICK_EXPIRES_SECONDS)
def runs_stale_recover_task(older_than_seconds: float | None = None) -> list[str]:
    """Beat's sweep (every minute, see install_schedule): resume runs whose worker went silent."""
    from datetime import timedelta

    from loop.stale import runs_stale_recover

    older_than = timedelta(seconds=older_than_seconds) if older_than_seconds is not None else None
    return runs_stale_recover(older_than=older_than)


@shared_task(name="loop.tasks.loop_step_task", ignore_result=True)
def loop_step_task(run_id: int, step: str) -> None:
    outcome = loop_step_execute(run_id=run_id, step=step)
    if outcome is None:
        return
    run = LoopRun.objects.get(pk=run_id)
    if isinstance(outcome, Wait):
        # Waiting for a scoring run: check again shortly instead of blocking a worker.
        loop_enqueue(run=run, step=step, countdown=POLL_SECONDS)
        return
    loop_enqueue(run=run, step=outcome)
