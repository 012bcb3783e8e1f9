"""Flag and Review now belong to curate (curate/0001_initial); their tables stay."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('curate', '0001_initial'),
        ('annotate', '0006_open_slots_index'),
    ]

    operations = [
        # The tables stay where they are (the models set db_table): only Django's state moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name='review',
                    name='caption',
                ),
                migrations.RemoveField(
                    model_name='review',
                    name='reviewer',
                ),
                migrations.RemoveField(
                    model_name='review',
                    name='rewritten_caption',
                ),
                migrations.DeleteModel(
                    name='Flag',
                ),
                migrations.DeleteModel(
                    name='Review',
                ),
            ],
        ),
    ]
