"""The two (encoder, fingerprint, version, rank) indexes of ``scoring_score`` carry ``caption_id`` and
``cosine`` as non-key columns (PostgreSQL), so a filter run's read of one model's (caption, rank,
cosine) is an index-only scan. On PostgreSQL the new index is built CONCURRENTLY under a temporary name, then swapped
for the old one, so a pool's score table (tens of millions of rows) stays writable while it builds.
SQLite has no covering indexes: nothing changes there.
"""

from django.db import migrations, models

INDEXES = {
    "score_weights_reward_idx": "reward",
    "score_weights_clip_idx": "clipscore",
}


def _swap(apps, schema_editor, include: bool):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, column in INDEXES.items():
        extra = " INCLUDE (caption_id, cosine)" if include else ""
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}_new")
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY {name}_new ON scoring_score "
            f"(encoder, encoder_fingerprint, reward_model_version, {column}){extra}"
        )
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        schema_editor.execute(f"ALTER INDEX {name}_new RENAME TO {name}")


def forwards(apps, schema_editor):
    _swap(apps, schema_editor, include=True)


def backwards(apps, schema_editor):
    _swap(apps, schema_editor, include=False)


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("scoring", "0007_shard_pass"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveIndex(model_name="score", name="score_weights_reward_idx"),
                migrations.RemoveIndex(model_name="score", name="score_weights_clip_idx"),
                migrations.AddIndex(
                    model_name="score",
                    index=models.Index(
                        fields=["encoder", "encoder_fingerprint", "reward_model_version", "reward"],
                        include=("caption", "cosine"),
                        name="score_weights_reward_idx",
                    ),
                ),
                migrations.AddIndex(
                    model_name="score",
                    index=models.Index(
                        fields=["encoder", "encoder_fingerprint", "reward_model_version", "clipscore"],
                        include=("caption", "cosine"),
                        name="score_weights_clip_idx",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        ),
    ]
