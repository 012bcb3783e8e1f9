"""Install (idempotently) the beat schedule that drives the loop.

    python manage.py install_schedule [--every-minutes 10] [--disable]

Creates or updates the django-celery-beat PeriodicTask "loupe: loop tick" that runs
``loop.tasks.loop_tick_task``. It stays editable in the Django admin (Periodic tasks): an
admin may change the interval or disable it there; running this command again only resets the
interval when ``--every-minutes`` is given.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from loop.tasks import TICK_EXPIRES_SECONDS

TASK_NAME = "loupe: loop tick"
TASK_PATH = "loop.tasks.loop_tick_task"
DEFAULT_MINUTES = 10
SWEEP_NAME = "loupe: resume runs whose worker died"
SWEEP_PATH = "loop.tasks.runs_stale_recover_task"


def schedule_install(*, every_minutes: int | None = None, enabled: bool = True) -> tuple[PeriodicTask, bool]:
    """Return ``(periodic task, created)``."""
    existing = PeriodicTask.objects.filter(name=TASK_NAME).first()
    minutes = every_minutes or (
        existing.interval.every if existing and existing.interval else DEFAULT_MINUTES
    )
    interval, _ = IntervalSchedule.objects.get_or_create(every=minutes, period=IntervalSchedule.MINUTES)
    # Expire a tick well before the next one is due, so ticks queued while the worker was down are
    # dropped instead of arriving together.
    expire = min(TICK_EXPIRES_SECONDS, max(30, minutes * 60 - 30))
    # A rerun keeps an admin's "disabled" unless asked to disable; a fresh install follows the flag.
    keep_enabled = existing.enabled if existing is not None else True
    task, created = PeriodicTask.objects.update_or_create(
        name=TASK_NAME,
        defaults={
            "task": TASK_PATH,
            "interval": interval,
            "queue": "default",
            "expire_seconds": expire,
            "enabled": keep_enabled and enabled,
            "description": "Retrain, gate, rescore and refresh priorities when enough new judgments arrived "
            "(training/loop.py). Safe to run often: it does nothing while a chain runs.",
        },
    )
    stale_sweep_install()
    return task, created


def stale_sweep_install() -> PeriodicTask:
    """Every minute: resume running runs whose worker stopped beating (loop/stale.py). Cheap (one
    indexed-size query per run table) and what lets the demo recover from a killed worker alone."""
    interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.MINUTES)
    existing = PeriodicTask.objects.filter(name=SWEEP_NAME).first()
    task, _ = PeriodicTask.objects.update_or_create(
        name=SWEEP_NAME,
        defaults={
            "task": SWEEP_PATH,
            "interval": interval,
            "queue": "default",
            "expire_seconds": 55,
            "enabled": existing.enabled if existing is not None else True,
            "description": "Resume import, cleaning, scoring and training runs whose worker has not "
            "stamped a heartbeat for LOUPE_STALE_RUN_MINUTES (a killed worker). Safe to run often.",
        },
    )
    return task


class Command(BaseCommand):
    help = "Create or update the Celery beat schedule for the active-learning loop (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--every-minutes", type=int, default=None, help=f"Default {DEFAULT_MINUTES}.")
        parser.add_argument("--disable", action="store_true", help="Install it disabled.")

    def handle(self, *args, every_minutes: int | None, disable: bool, **options):
        if every_minutes is not None and every_minutes < 1:
            raise CommandError("--every-minutes must be at least 1.")
        task, created = schedule_install(every_minutes=every_minutes, enabled=not disable)
        state = "enabled" if task.enabled else "disabled"
        verb = "Installed" if created else "Schedule already installed;"
        self.stdout.write(
            f"{verb} '{task.name}': {TASK_PATH} every {task.interval.every} minutes ({state}, "
            f"ticks expire after {task.expire_seconds}s), and '{SWEEP_NAME}' every minute. "
            "Edit them in the Django admin under Periodic tasks."
        )
