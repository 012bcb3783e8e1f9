"""A loop run's bookkeeping: the chain's steps, its errors, and the row's log, params and summary.

Shared by the services that start and drive a chain (``loop.services``) and the steps themselves
(``loop.steps``).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from curate.models import FilterRun
from loop.models import LoopRun
from pool.models import RunStatus
from scoring.models import ScoringRun
from training.models import TrainingRun

STEPS = ("retrain", "evaluate", "gate", "rescore", "priorities", "flags", "filter")
# Steps whose work needs the encoder or the training loop: they run on GPU workers.
GPU_STEPS = frozenset({"retrain", "rescore", "priorities"})
UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)
# Seconds between checks while the rescore step waits for its scoring run.
POLL_SECONDS = 5.0

# Set while ``loop_run_inline`` drives a chain: work a step would hand to workers (the pool's scoring
# run) is done in this process instead.
INLINE = contextvars.ContextVar("loop_inline", default=False)


class LoopBusy(Exception):
    """A chain is already queued or running; another one would overlap it."""


class LoopError(Exception):
    """A step cannot go on; the message says why, in words for the console."""


@dataclass(frozen=True)
class Wait:
    """A step's answer while it waits for work it started elsewhere (the pool's scoring run)."""

    note: str


def loop_next_step(run: LoopRun) -> str | None:
    if not run.step:
        return STEPS[0]
    index = STEPS.index(run.step)
    return STEPS[index + 1] if index + 1 < len(STEPS) else None


def log_line(run: LoopRun, line: str) -> None:
    stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
    run.log = f"{run.log}{stamp} {line}\n"


def params_update(run: LoopRun, **values) -> None:
    """Persist step outputs at once, so a retry after a crash finds what was already started."""
    with transaction.atomic():
        fresh = LoopRun.objects.select_for_update().get(pk=run.pk)
        fresh.params = {**fresh.params, **values}
        fresh.save(update_fields=["params"])
    run.params = fresh.params


def summary_update(run: LoopRun, **values) -> None:
    with transaction.atomic():
        fresh = LoopRun.objects.select_for_update().get(pk=run.pk)
        fresh.summary = {**fresh.summary, **values}
        fresh.save(update_fields=["summary"])
    run.summary = fresh.summary


def run_children(run: LoopRun) -> list:
    found = []
    for key, model in (
        ("training_run_id", TrainingRun),
        ("scoring_run_id", ScoringRun),
        ("filter_run_id", FilterRun),
    ):
        if run.params.get(key):
            child = model.objects.filter(pk=run.params[key]).first()
            if child is not None:
                found.append(child)
    return found
