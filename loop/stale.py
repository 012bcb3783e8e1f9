"""Beat's sweep for runs whose worker died: resume them, so a SIGKILLed worker (or a lost machine)
costs minutes, not an admin's visit.

A run counts as stale when it is ``running`` and its worker has not stamped ``heartbeat_at`` for
``LOUPE_STALE_RUN_MINUTES`` (``pool.run_health``). Each kind is resumed by the task that runs it, which
is idempotent: imports insert with ignore-conflicts, cleaning recomputes its marks, scoring chunks that
committed are skipped (shards of a shard pass too), a training run waits for the training lock. A run resumed
``LOUPE_STALE_RUN_MAX_RESUMES`` times (its input kills the worker each time, e.g. out of memory) is
failed with a message instead of being retried for ever.

Runs done inside a management command's own process (``--sync``) carry no heartbeat and are never
swept: nothing would be there to resume them but that process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from pool.models import CleaningRun, ImportRun, RunStatus
from pool.run_health import runs_stale, stale_after
from scoring.models import ScoringRun, ShardPassRun
from training.models import TrainingRun

logger = logging.getLogger(__name__)


def _resume_import(run: ImportRun) -> None:
    from pool.tasks import import_run_execute

    transaction.on_commit(lambda: import_run_execute.delay(run.pk))


def _resume_cleaning(run: CleaningRun) -> None:
    from pool.tasks import cleaning_run_execute

    transaction.on_commit(lambda: cleaning_run_execute.delay(run.pk))


def _resume_scoring(run: ScoringRun) -> None:
    from scoring.services import scoring_run_resume

    scoring_run_resume(run=run)


def _resume_shard_pass(run: ShardPassRun) -> None:
    from scoring.shard_pass import shard_pass_resume

    shard_pass_resume(run=run)


def _resume_training(run: TrainingRun) -> None:
    from training.tasks import training_run_execute

    transaction.on_commit(lambda: training_run_execute.delay(run.pk))


@dataclass(frozen=True)
class Recoverable:
    label: str
    model: type
    resume: object
    # Runs another run owns (a loop chain's training run) are left to their owner.
    exclude: dict | None = None
    # A scoring run is "running" while its chunks wait in the gpu queue, possibly behind another run's
    # chunks: its silence then means a busy queue, not a dead worker. While any run of the kind is
    # beating, none of its silent ones is swept.
    quiet_only_when_all_are: bool = False


RECOVERABLE = (
    Recoverable("import", ImportRun, _resume_import),
    Recoverable("cleaning", CleaningRun, _resume_cleaning),
    Recoverable("scoring", ScoringRun, _resume_scoring, quiet_only_when_all_are=True),
    # Like scoring: its shard tasks may wait behind other work in the gpu queue.
    Recoverable("shard pass", ShardPassRun, _resume_shard_pass, quiet_only_when_all_are=True),
    Recoverable("training", TrainingRun, _resume_training, exclude={"params__has_key": "loop_run"}),
)


def _some_run_beats(model, older_than: timedelta) -> bool:
    cutoff = timezone.now() - older_than
    return model.objects.filter(status=RunStatus.RUNNING, heartbeat_at__gte=cutoff).exists()


def max_resumes() -> int:
    return int(getattr(settings, "LOUPE_STALE_RUN_MAX_RESUMES", 3))


def runs_stale_recover(*, older_than: timedelta | None = None) -> list[str]:
    """Resume (or, past the resume limit, fail) every stale run; returns one line per run touched."""
    older_than = older_than if older_than is not None else stale_after()
    minutes = older_than.total_seconds() / 60
    lines: list[str] = []
    for kind in RECOVERABLE:
        stale = runs_stale(model=kind.model, older_than=older_than)
        if kind.exclude:
            stale = stale.exclude(**kind.exclude)
        if kind.quiet_only_when_all_are and _some_run_beats(kind.model, older_than):
            continue
        for run in stale.order_by("id"):
            line = _recover_one(kind, run, minutes)
            if line:
                logger.warning("stale-run sweep: %s", line)
                lines.append(line)
    return lines


def _recover_one(kind: Recoverable, run, minutes: float) -> str:
    now = timezone.now()
    note = f"{now:%Y-%m-%d %H:%M:%S} no heartbeat from its worker for {minutes:.0f} min"
    with transaction.atomic():
        # Claim it: only the sweep whose UPDATE matches the stamp it read acts, so two overlapping
        # beat ticks (or two beat processes) never resume one run twice.
        if run.stale_resumes >= max_resumes():
            error = (
                f"The worker running this {kind.label} run stopped answering {run.stale_resumes + 1} times "
                "(killed, out of memory, or its machine was lost); it was resumed "
                f"{run.stale_resumes} times and is now stopped. Check the worker logs, then start it again."
            )
            claimed = kind.model.objects.filter(
                pk=run.pk, status=RunStatus.RUNNING, heartbeat_at=run.heartbeat_at
            ).update(status=RunStatus.FAILED, error=error, finished_at=now, heartbeat_at=now)
            return f"{kind.label} run {run.pk}: failed after {run.stale_resumes} resumes" if claimed else ""
        claimed = kind.model.objects.filter(
            pk=run.pk, status=RunStatus.RUNNING, heartbeat_at=run.heartbeat_at
        ).update(
            heartbeat_at=now,
            stale_resumes=F("stale_resumes") + 1,
            log=Concat(F("log"), Value(f"\n{note}; resumed.")),
        )
        if not claimed:
            return ""
        run.refresh_from_db()
        kind.resume(run)
    return f"{kind.label} run {run.pk}: resumed ({note})"
