"""The lifecycle every pool run shares (imports and cleaning): start, progress, finish, cancelled.

Progress lives on the run row (``done``/``total``) so pages can poll it.
"""

from __future__ import annotations

from collections.abc import Callable

from django.utils import timezone

from pool.models import RunStatus

Progress = Callable[[int, int], None]


def run_start(run, *, total: int = 0) -> None:
    run.status = RunStatus.RUNNING
    run.started_at = run.started_at or timezone.now()
    run.error = ""
    run.total = total
    run.done = 0
    run.save(update_fields=["status", "started_at", "error", "total", "done"])


def run_progress(run, *, done: int, total: int, progress: Progress | None) -> None:
    run.done, run.total = done, max(total, done)
    type(run).objects.filter(pk=run.pk).update(done=run.done, total=run.total)
    if progress:
        progress(run.done, run.total)


def run_finish(run, *, status: str, summary: dict, error: str = "") -> None:
    run.status = status
    run.summary = summary
    run.error = error
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "summary", "error", "finished_at", "done", "total"])


def run_cancelled(run) -> bool:
    return type(run).objects.filter(pk=run.pk, status=RunStatus.CANCELLED).exists()
