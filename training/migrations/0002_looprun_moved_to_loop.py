"""LoopRun now belongs to loop (loop/0001_initial); its table stays."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('loop', '0001_initial'),
        ('training', '0001_initial'),
    ]

    operations = [
        # The tables stay where they are (the models set db_table): only Django's state moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(
                    name='LoopRun',
                ),
            ],
        ),
    ]
