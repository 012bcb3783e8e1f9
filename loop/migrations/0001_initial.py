"""LoopRun moves here from training. State only: the table keeps its name, so every row stays."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('annotate', '0006_open_slots_index'),
        ('training', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The tables stay where they are (the models set db_table): only Django's state moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='LoopRun',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('status', models.CharField(choices=[('queued', 'queued'), ('running', 'running'), ('succeeded', 'succeeded'), ('failed', 'failed'), ('cancelled', 'cancelled')], default='queued', max_length=16)),
                        ('done', models.PositiveBigIntegerField(default=0)),
                        ('total', models.PositiveBigIntegerField(default=0)),
                        ('params', models.JSONField(blank=True, default=dict)),
                        ('summary', models.JSONField(blank=True, default=dict)),
                        ('error', models.TextField(blank=True)),
                        ('log', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('step', models.CharField(blank=True, max_length=32)),
                        ('trigger', models.CharField(default='manual', max_length=16)),
                        ('campaign', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to='annotate.campaign')),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'training_looprun',
                        'ordering': ['-created_at'],
                        'abstract': False,
                    },
                ),
            ],
        ),
    ]
