"""One chain at a time: the lock that serialises chain starts and the check for an unfinished chain."""

from __future__ import annotations

import zlib

from django.db import connection

from loop.models import LoopRun
from loop.runs import UNFINISHED

# Any constant works; it names the PostgreSQL advisory lock that serialises chain starts.
_LOCK_KEY = zlib.crc32(b"loupe.loop_chain")


def chain_lock() -> None:
    """Serialise chain starts for the rest of the current transaction.

    PostgreSQL: a transaction-scoped advisory lock (two concurrent starts queue here, the second then
    sees the first one's row). SQLite: the settings open every transaction with BEGIN IMMEDIATE, which
    already holds the database's single write lock until commit.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])


def loop_unfinished() -> LoopRun | None:
    return LoopRun.objects.filter(status__in=UNFINISHED).order_by("created_at").first()


def busy_message(run: LoopRun) -> str:
    where = f"after step '{run.step}'" if run.step else "before its first step"
    return (
        f"Loop run {run.pk} for campaign '{run.campaign}' is already {run.status} ({where}); "
        "wait for it to finish or cancel it on the jobs page."
    )
