"""What the commands that queue work for the ``gpu`` workers share (``score_pool``, ``shard_pass``):
asking whether a worker consumes that queue, and following a run's progress until it finishes."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError

from pool.progress import ProgressBar

# Long enough for a busy worker's control thread to answer, short enough not to be noticed.
WORKER_PING_SECONDS = 2.0
# Where CELERY_TASK_ROUTES sends scoring.tasks.*.
SCORING_QUEUE = "gpu"


def workers_queues(*, timeout: float) -> dict[str, set[str]]:
    """{worker name: queue names} of the workers that answer within ``timeout`` seconds."""
    # The project's app (config/__init__.py makes it current); imported by name it would be a floor above.
    from celery import current_app

    try:
        answers = current_app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # noqa: BLE001 - a broker that cannot be reached means no worker answers
        return {}
    return {name: {queue.get("name", "") for queue in queues or []} for name, queues in answers.items()}


def gpu_worker_check(command: BaseCommand, *, queue_only: bool, tasks: str, sync_hint: str) -> None:
    """Ask the workers (a broadcast, answered within WORKER_PING_SECONDS) whether one consumes the gpu
    queue: without one the run would wait in the queue and the command would follow it for ever.
    ``queue_only`` (--no-wait): queuing for a worker that starts later is what was asked; warn and go on."""
    queues = workers_queues(timeout=WORKER_PING_SECONDS)
    if any(SCORING_QUEUE in names for names in queues.values()):
        return
    if queues:
        found = "; ".join(f"{name}: {', '.join(sorted(q)) or 'none'}" for name, q in sorted(queues.items()))
        problem = f"No worker consumes the {SCORING_QUEUE!r} queue the {tasks} go to (workers: {found})."
    else:
        problem = f"No Celery worker answered within {WORKER_PING_SECONDS:g} s: none is running."
    advice = (
        f"Start one (celery -A config worker -Q default,{SCORING_QUEUE}; `make demo` starts web, workers "
        f"and beat), or {sync_hint} with --sync."
    )
    if queue_only:
        command.stderr.write(f"Warning: {problem} The run is queued and starts when a worker does. {advice}")
        return
    raise CommandError(f"{problem} {advice}")


def run_follow(command: BaseCommand, run, *, title: str, where: str, report: Callable) -> None:
    """A progress bar of ``run`` (done/total pairs) until it finishes, then ``report(run)``; Ctrl-C
    stops following, not the run."""
    bar = ProgressBar(title, "pair", stream=command.stderr._out)
    try:
        while True:
            run.refresh_from_db()
            bar(run.done, run.total)
            if run.is_finished:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        command.stdout.write(f"\nStopped following; {title[0].lower() + title[1:]} goes on (see {where}).")
        return
    finally:
        bar.close()
    report(run)
