"""PostgreSQL partitions of ``scoring_score``: a bulk rescore loads its model version into a table of
its own, indexes it once and attaches it (migration ``scoring/0009``).

Why: inserting ten million rows into a score table that already holds tens of millions means ten
million random inserts into each of its B-trees, whose pages stop fitting in memory; that, not the
reward heads, held the bulk rescore at 8,453 pairs/s at 10M (docs/scale.md). Loading a bare table
and building its indexes afterwards (sorted builds) is PostgreSQL's own advice for bulk loads.

The parent is partitioned by RANGE (encoder, encoder_fingerprint, reward_model_version). Rows written
any other way (scoring runs, the shard pass, CLIPScore rows) go to the DEFAULT partition, as before.
A load table:

- is created by the run's plan only when the version has no score rows yet (a new reward model), so
  the whole version lives in one partition; otherwise the run upserts into the parent as before;
- receives each chunk's rows in the chunk's own transaction (the chunk's ``done`` flag and its rows
  commit together: a redelivered chunk writes nothing, a killed worker's chunk left nothing);
- is finished once, under a lock on the run's row, when every chunk is done (or the run is
  cancelled): orphans deleted, primary key, unique key, the two rank indexes, the foreign key and the
  partition's CHECK built, then ``ATTACH PARTITION``. If rows of the same version appeared meanwhile
  (another run wrote them), its rows are upserted into the parent instead and the table dropped.

Readers see nothing of a bulk run until it is finished: a version's scores appear all at once.
Pruning a loaded version is ``DROP TABLE`` (``score_version_delete``).
"""

from __future__ import annotations

import logging
import time

from django.db import IntegrityError, connection, transaction
from psycopg import sql

PARENT = "scoring_score"
LOAD_PREFIX = "scoring_score_r"
COLUMNS = (
    "caption_id, encoder, encoder_fingerprint, reward_model_version, cosine, clipscore, reward, criteria, "
    "uncertainty, truncated, error, updated_at"
)

logger = logging.getLogger(__name__)


def _q(statement: sql.Composable) -> str:
    """A composed statement as text (Django's cursor takes strings)."""
    connection.ensure_connection()
    return statement.as_string(connection.connection)


def partitioned() -> bool:
    """Whether ``scoring_score`` is a partitioned table here (PostgreSQL after migration 0009)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [PARENT])
        row = cursor.fetchone()
    return bool(row and row[0] == "p")


def load_table_name(run_id: int) -> str:
    return f"{LOAD_PREFIX}{int(run_id)}"


def table_state(name: str) -> str:
    """'missing', 'attached' (a partition of ``scoring_score``) or 'loading' (a table on its own)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid) FROM pg_class c "
            "WHERE c.oid = to_regclass(%s)",
            [name],
        )
        row = cursor.fetchone()
    if row is None:
        return "missing"
    return "attached" if row[0] else "loading"


def load_table_create(name: str) -> None:
    """A bare table with the parent's columns and defaults (ids from the shared sequence), replacing a
    table of that name that is not a partition (what a crashed plan left)."""
    if table_state(name) == "attached":
        raise ValueError(f"{name} is already a partition of {PARENT}")
    with connection.cursor() as cursor:
        cursor.execute(_q(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name))))
        cursor.execute(
            _q(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
                    sql.Identifier(name), sql.Identifier(PARENT)
                )
            )
        )


def _key_has_rows(cursor, key: tuple[str, str, int]) -> bool:
    cursor.execute(
        f"SELECT EXISTS (SELECT 1 FROM {PARENT} WHERE encoder = %s AND encoder_fingerprint = %s "
        "AND reward_model_version = %s)",
        list(key),
    )
    return bool(cursor.fetchone()[0])


def key_has_rows(key: tuple[str, str, int]) -> bool:
    with connection.cursor() as cursor:
        return _key_has_rows(cursor, key)


def load_table_finish(
    name: str, key: tuple[str, str, int], *, update_fields: list[str], seconds: dict | None = None
) -> str:
    """Index ``name`` and attach it as ``key``'s partition; or, when ``key`` has rows in the parent
    already, upsert its rows there and drop it. Inside the caller's transaction. Returns what it did;
    ``seconds`` (when given) receives each step's duration."""
    state = table_state(name)
    if state != "loading":
        return state
    table = sql.Identifier(name)
    encoder, fingerprint, version = key
    with connection.cursor() as cursor:
        if _key_has_rows(cursor, key):
            updates = sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(f)) for f in update_fields
            )
            cursor.execute(
                _q(
                    sql.SQL(
                        "INSERT INTO {parent} ({cols}) SELECT {cols} FROM {table} ON CONFLICT (caption_id, "
                        "encoder, encoder_fingerprint, reward_model_version) DO UPDATE SET {updates}"
                    ).format(
                        parent=sql.Identifier(PARENT), cols=sql.SQL(COLUMNS), table=table, updates=updates
                    )
                )
            )
            cursor.execute(_q(sql.SQL("DROP TABLE {}").format(table)))
            return "merged"
        ddl = {
            "primary key": "ALTER TABLE {t} ADD CONSTRAINT {pk} PRIMARY KEY (id)",
            "unique key": "ALTER TABLE {t} ADD CONSTRAINT {unique} UNIQUE (caption_id, encoder, "
            "encoder_fingerprint, reward_model_version)",
            "reward index": "CREATE INDEX {reward} ON {t} (encoder, encoder_fingerprint, reward_model_version, "
            "reward) INCLUDE (caption_id, cosine)",
            "clipscore index": "CREATE INDEX {clip} ON {t} (encoder, encoder_fingerprint, reward_model_version, "
            "clipscore) INCLUDE (caption_id, cosine)",
            "truncated index": "CREATE INDEX {truncated} ON {t} (caption_id) WHERE truncated",
            "foreign key": "ALTER TABLE {t} ADD CONSTRAINT {fk} FOREIGN KEY (caption_id) REFERENCES pool_caption "
            "(id) DEFERRABLE INITIALLY DEFERRED",
            # Proves the rows fit the partition's bound, so ATTACH does not scan them again.
            "bound check": "ALTER TABLE {t} ADD CONSTRAINT {check} CHECK (encoder = {e} AND encoder_fingerprint = "
            "{f} AND reward_model_version = {v})",
            "attach": "ALTER TABLE {parent} ATTACH PARTITION {t} FOR VALUES FROM ({e}, {f}, {v}) TO ({e}, {f}, {v1})",
        }
        names = {
            part: sql.Identifier(f"{name}_{part}")
            for part in ("pk", "unique", "reward", "clip", "truncated", "fk", "check")
        }
        values = dict(
            t=table,
            parent=sql.Identifier(PARENT),
            e=sql.Literal(encoder),
            f=sql.Literal(fingerprint),
            v=sql.Literal(int(version)),
            v1=sql.Literal(int(version) + 1),
            **names,
        )
        seconds = {} if seconds is None else seconds
        for step, statement in ddl.items():
            started = time.perf_counter()
            if step in REPAIRS:
                _add_or_repair(cursor, _q(sql.SQL(statement).format(**values)), name, step)
            else:
                cursor.execute(_q(sql.SQL(statement).format(**values)))
            seconds[step] = round(time.perf_counter() - started, 2)
        logger.info("%s attached; seconds per step: %s", name, seconds)
    return "attached"


# What a failed constraint step deletes before it tries again. The foreign key: scores of captions
# deleted while the run scored them. The unique key: older copies of a caption's row, which only a
# chunk forced to run again during the load (its done flag reset by hand) leaves.
REPAIRS = {
    "foreign key": "DELETE FROM {t} s WHERE NOT EXISTS (SELECT 1 FROM pool_caption c WHERE c.id = s.caption_id)",
    "unique key": "DELETE FROM {t} a USING {t} b WHERE a.caption_id = b.caption_id AND a.id < b.id",
}


def _add_or_repair(cursor, statement: str, name: str, step: str) -> None:
    """Add a constraint (one validating pass); if the rows break it, delete the offending ones as
    ``REPAIRS`` says and add it again."""
    try:
        with transaction.atomic():
            cursor.execute(statement)
    except IntegrityError:
        cursor.execute(_q(sql.SQL(REPAIRS[step]).format(t=sql.Identifier(name))))
        logger.warning("%s: %d rows deleted before adding its %s", name, cursor.rowcount, step)
        cursor.execute(statement)


def table_vacuum(name: str) -> None:
    """VACUUM ANALYZE a freshly attached partition (outside any transaction): the visibility map
    makes the rank indexes' scans index-only, the statistics give the planner its row counts."""
    if connection.in_atomic_block or table_state(name) != "attached":
        return
    with connection.cursor() as cursor:
        cursor.execute(_q(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(name))))


def score_version_delete(key: tuple[str, str, int], *, tables: list[str] = ()) -> int:
    """Delete every score row of ``key``: drop ``tables`` (its loaded partitions), then delete what
    is left in the parent. Returns the rows removed."""
    removed = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for name in tables:
            if table_state(name) == "missing":
                continue
            cursor.execute(_q(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))))
            removed += cursor.fetchone()[0]
            cursor.execute(_q(sql.SQL("DROP TABLE {}").format(sql.Identifier(name))))
        cursor.execute(
            f"DELETE FROM {PARENT} WHERE encoder = %s AND encoder_fingerprint = %s AND reward_model_version = %s",
            list(key),
        )
        removed += cursor.rowcount
    return removed
