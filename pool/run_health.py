"""Worker heartbeats on run rows, and the query that finds runs whose worker went silent.

A worker killed with SIGKILL (or a lost machine) leaves its run "running": the filesystem broker never
gives the message back, and Redis only after its visibility timeout (an hour). Workers therefore stamp
``heartbeat_at`` at progress points, and beat's sweep (``loop.stale``) resumes running runs whose stamp
is older than ``LOUPE_STALE_RUN_MINUTES``. Every run kind it resumes is idempotent.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from pool.models import RunStatus


def stale_after() -> timedelta:
    return timedelta(minutes=float(getattr(settings, "LOUPE_STALE_RUN_MINUTES", 10)))


def run_heartbeat(*, model, run_id: int) -> None:
    """Stamp the run as alive now (one UPDATE of one row)."""
    model.objects.filter(pk=run_id).update(heartbeat_at=timezone.now())


class Heartbeat:
    """A progress callback that stamps the run at most every ``every`` seconds, whatever it is passed,
    so a service's per-batch ``progress(...)`` keeps the run alive without a write per batch."""

    def __init__(self, *, model, run_id: int, every: float = 15.0, then=None):
        self.model, self.run_id, self.every, self.then = model, run_id, every, then
        self._last = 0.0

    def __call__(self, *args, **kwargs) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            run_heartbeat(model=self.model, run_id=self.run_id)
        if self.then is not None:
            self.then(*args, **kwargs)


def runs_stale(*, model, older_than: timedelta | None = None) -> QuerySet:
    """Running runs of ``model`` whose worker has not stamped them for ``older_than``."""
    cutoff = timezone.now() - (older_than if older_than is not None else stale_after())
    return model.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff)
