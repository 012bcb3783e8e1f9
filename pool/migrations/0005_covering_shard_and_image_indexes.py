"""The foreign-key indexes ``pool_image.shard_id`` and ``pool_caption.image_id`` are replaced by ones
that also carry ``status`` and ``id`` (PostgreSQL ``INCLUDE``): a shard's usable pairs (what the bulk
rescore asks for each shard) are then read from two index ranges, not from the rows (7 MB of heap per
10,000-pair shard at 10M). On PostgreSQL the new indexes are built CONCURRENTLY (the tables stay
writable; about 2 minutes each at 10M pairs), then the old ones dropped. SQLite gets plain indexes.
"""

from django.db import migrations, models

INDEXES = (
    ("pool_image", "shard_id", "image_shard_idx"),
    ("pool_caption", "image_id", "caption_image_idx"),
)


def _plain_indexes(schema_editor, table: str, column: str) -> list[str]:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return [
        name
        for name, info in constraints.items()
        if info["columns"] == [column] and info["index"] and not info["unique"] and not info["foreign_key"]
    ]


def forwards(apps, schema_editor):
    postgres = schema_editor.connection.vendor == "postgresql"
    concurrently = " CONCURRENTLY" if postgres else ""
    for table, column, name in INDEXES:
        if postgres:
            # A build interrupted earlier leaves an invalid index of this name: start it again.
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(
                    "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [name]
                )
                row = cursor.fetchone()
            if row and row[0]:
                schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        include = " INCLUDE (status, id)" if postgres else ""
        schema_editor.execute(f"CREATE INDEX{concurrently} IF NOT EXISTS {name} ON {table} ({column}){include}")
        for old in _plain_indexes(schema_editor, table, column):
            if old != name:
                schema_editor.execute(f'DROP INDEX{concurrently} IF EXISTS "{old}"')


def backwards(apps, schema_editor):
    """The plain foreign-key indexes again, under Django's names for them, and the covering ones gone."""
    concurrently = " CONCURRENTLY" if schema_editor.connection.vendor == "postgresql" else ""
    for table, column, name in INDEXES:
        plain = schema_editor.quote_name(schema_editor._create_index_name(table, [column]))
        schema_editor.execute(f"CREATE INDEX{concurrently} IF NOT EXISTS {plain} ON {table} ({column})")
        schema_editor.execute(f"DROP INDEX{concurrently} IF EXISTS {name}")


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("pool", "0004_caption_rewrite_index"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="image",
                    name="shard",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=models.deletion.PROTECT,
                        related_name="images",
                        to="pool.shard",
                    ),
                ),
                migrations.AlterField(
                    model_name="caption",
                    name="image",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=models.deletion.CASCADE,
                        related_name="captions",
                        to="pool.image",
                    ),
                ),
                migrations.AddIndex(
                    model_name="image",
                    index=models.Index(fields=["shard"], include=("status", "id"), name="image_shard_idx"),
                ),
                migrations.AddIndex(
                    model_name="caption",
                    index=models.Index(fields=["image"], include=("status", "id"), name="caption_image_idx"),
                ),
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        ),
    ]
