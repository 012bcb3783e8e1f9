"""``scoring_score`` becomes a partitioned table on PostgreSQL (``scoring.score_partitions``).

Partitioned by RANGE (encoder, encoder_fingerprint, reward_model_version): a bulk rescore loads a new
model version into a table of its own with no indexes, builds them once (sorted builds instead of ten
million random inserts into five B-trees) and attaches it as that version's partition; every existing
row stays where it is, in the DEFAULT partition ``scoring_score_default``, which is the old table
renamed. No row moves and no index is rebuilt: on a 20M-row table this migration takes a second.

Also drops the index on ``caption_id`` alone (both databases): the unique (caption, encoder,
fingerprint, version) index leads with the caption and serves every lookup by caption, so the extra
index only cost every score write one more B-tree.

The id column: PostgreSQL 15 has no identity columns on partitioned tables, so ids come from a plain
sequence ``scoring_score_id_seq`` (continuing the identity's numbers) shared by every partition.
A later migration that alters ``Score.id`` must be written by hand for PostgreSQL.
Reversible: backwards, the rows of every other partition move into the default partition, which
becomes the plain table again (identity column and original names restored).
"""

from django.db import migrations, models

PARENT = "scoring_score"
DEFAULT = "scoring_score_default"


def _is_partitioned(cursor) -> bool:
    cursor.execute("SELECT relkind FROM pg_class WHERE relname = %s AND relkind IN ('r', 'p')", [PARENT])
    row = cursor.fetchone()
    return bool(row and row[0] == "p")


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        if _is_partitioned(cursor):
            return
        cursor.execute(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype IN ('p', 'u', 'f')",
            [PARENT],
        )
        constraints = cursor.fetchall()
        cursor.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index i "
            "WHERE indrelid = %s::regclass AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE "
            "c.conindid = i.indexrelid AND c.conrelid = i.indrelid)",
            [PARENT],
        )
        indexes = cursor.fetchall()
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [PARENT])
        (identity_sequence,) = cursor.fetchone()
    statements = [f"ALTER TABLE {PARENT} RENAME TO {DEFAULT}"]
    # The parent takes the original names (Django's migrations refer to them); the default
    # partition's copies are renamed out of the way and attached to the parent's below.
    for name, kind, _ in constraints:
        if kind in ("p", "u"):
            statements.append(f'ALTER TABLE {DEFAULT} RENAME CONSTRAINT "{name}" TO "{_short(DEFAULT + "_" + name)}"')
    for name, _ in indexes:
        statements.append(f'ALTER INDEX "{name}" RENAME TO "{_short(DEFAULT + "_" + name)}"')
    statements += [
        f"ALTER SEQUENCE {identity_sequence} RENAME TO scoring_score_identity_seq_old",
        "CREATE SEQUENCE scoring_score_id_seq AS bigint",
        "SELECT setval('scoring_score_id_seq', GREATEST("
        f"(SELECT COALESCE(max(id), 0) FROM {DEFAULT}), (SELECT last_value FROM scoring_score_identity_seq_old), 1))",
        f"ALTER TABLE {DEFAULT} ALTER COLUMN id DROP IDENTITY",
        f"ALTER TABLE {DEFAULT} ALTER COLUMN id SET DEFAULT nextval('scoring_score_id_seq')",
        f"CREATE TABLE {PARENT} (LIKE {DEFAULT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
        "PARTITION BY RANGE (encoder, encoder_fingerprint, reward_model_version)",
        f"ALTER SEQUENCE scoring_score_id_seq OWNED BY {PARENT}.id",
        f"ALTER TABLE {PARENT} ATTACH PARTITION {DEFAULT} DEFAULT",
    ]
    # The parent's unique constraint, indexes and foreign key: PostgreSQL attaches the default
    # partition's matching ones instead of building new ones. The primary key (id) stays per
    # partition: a partitioned table's key must contain the partition key.
    for name, kind, definition in constraints:
        if kind in ("u", "f"):
            statements.append(f'ALTER TABLE {PARENT} ADD CONSTRAINT "{name}" {definition}')
    # pg_get_indexdef() read before the renames: the original names, on the table now the parent.
    statements += [definition for _, definition in indexes]
    with schema_editor.connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def caption_index_drop(apps, schema_editor):
    """Drop the plain index on ``caption_id`` (Django's name for it has a hash: found by introspection)."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, PARENT)
    for name, info in constraints.items():
        if info["columns"] == ["caption_id"] and info["index"] and not info["unique"] and not info["foreign_key"]:
            schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        if not _is_partitioned(cursor):
            return
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass AND c.relname <> %s",
            [PARENT, DEFAULT],
        )
        others = [row[0] for row in cursor.fetchall()]
        columns = (
            "id, caption_id, encoder, encoder_fingerprint, reward_model_version, cosine, clipscore, reward, "
            "criteria, uncertainty, truncated, error, updated_at"
        )
        for name in others:
            cursor.execute(f'ALTER TABLE {PARENT} DETACH PARTITION "{name}"')
            cursor.execute(f'INSERT INTO {DEFAULT} ({columns}) SELECT {columns} FROM "{name}"')
            cursor.execute(f'DROP TABLE "{name}"')
        # The moved rows' deferred foreign-key checks, now: ALTER TABLE refuses pending trigger events.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SELECT GREATEST((SELECT COALESCE(max(id), 0) FROM scoring_score_default), 0) + 1")
        (start,) = cursor.fetchone()
        cursor.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {DEFAULT}")
        cursor.execute(f"ALTER TABLE {DEFAULT} ALTER COLUMN id DROP DEFAULT")
        # And its sequence (owned by its id column). CASCADE: the load tables of unfinished bulk runs
        # (not partitions) take their ids from it; they lose that default, not their rows.
        cursor.execute(f"DROP TABLE {PARENT} CASCADE")
        cursor.execute(f"ALTER TABLE {DEFAULT} RENAME TO {PARENT}")
        cursor.execute(
            f"ALTER TABLE {PARENT} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY "
            f"(SEQUENCE NAME scoring_score_id_seq START WITH {int(start)})"
        )
        prefix = f"{DEFAULT}_"
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND conname LIKE %s",
            [PARENT, prefix + "%"],
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f'ALTER TABLE {PARENT} RENAME CONSTRAINT "{name}" TO "{name[len(prefix):]}"')
        cursor.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass", [PARENT]
        )
        for (name,) in cursor.fetchall():
            if name.strip('"').startswith(prefix):
                cursor.execute(f'ALTER INDEX {name} RENAME TO "{name.strip(chr(34))[len(prefix):]}"')


def caption_index_create(apps, schema_editor):
    """Backwards: the plain index on ``caption_id`` again, under Django's name for it."""
    name = schema_editor._create_index_name(PARENT, ["caption_id"])
    schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {schema_editor.quote_name(name)} ON {PARENT} (caption_id)")


def _short(name: str) -> str:
    return name[:63]


class Migration(migrations.Migration):
    dependencies = [
        ("scoring", "0008_covering_score_indexes"),
    ]

    operations = [
        # Not AlterField: on PostgreSQL it drops and re-adds the foreign key, which validates every row.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="score",
                    name="caption",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=models.deletion.CASCADE,
                        related_name="scores",
                        to="pool.caption",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(caption_index_drop, caption_index_create)],
        ),
        migrations.RunPython(forwards, backwards),
    ]
