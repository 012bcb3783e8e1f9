"""FilterRun and Export now belong to curate (curate/0001_initial); their tables stay."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('curate', '0001_initial'),
        ('scoring', '0002_scoring_chunk'),
    ]

    operations = [
        # The tables stay where they are (the models set db_table): only Django's state moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name='filterrun',
                    name='created_by',
                ),
                migrations.DeleteModel(
                    name='Export',
                ),
                migrations.DeleteModel(
                    name='FilterRun',
                ),
            ],
        ),
    ]
