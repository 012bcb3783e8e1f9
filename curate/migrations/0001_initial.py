"""Flags and reviews (from annotate), filter runs and exports (from scoring) move to curate.

State only: the tables keep their names, so every row stays."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('annotate', '0006_open_slots_index'),
        ('scoring', '0002_scoring_chunk'),
        ('pool', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The tables stay where they are (the models set db_table): only Django's state moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='FilterRun',
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
                        ('encoder', models.CharField(max_length=255)),
                        ('reward_model_version', models.PositiveIntegerField(default=0)),
                        ('rule', models.JSONField(default=dict)),
                        ('considered', models.PositiveBigIntegerField(default=0)),
                        ('kept', models.PositiveBigIntegerField(default=0)),
                        ('kept_file', models.CharField(blank=True, max_length=1024)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'scoring_filterrun',
                        'ordering': ['-created_at'],
                        'abstract': False,
                    },
                ),
                migrations.CreateModel(
                    name='Export',
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
                        ('kind', models.CharField(choices=[('parquet', 'Parquet'), ('webdataset', 'WebDataset shards'), ('npy', 'DataComp uids (.npy)'), ('jsonl', 'JSONL'), ('preferences', 'preference pairs (JSONL)'), ('coco_hf', 'COCO-HF judgments (JSON)')], max_length=16)),
                        ('path', models.CharField(max_length=1024)),
                        ('manifest', models.JSONField(blank=True, default=dict)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('filter_run', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to='curate.filterrun')),
                    ],
                    options={
                        'db_table': 'scoring_export',
                        'ordering': ['-created_at'],
                        'abstract': False,
                    },
                ),
                migrations.CreateModel(
                    name='Review',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('decision', models.CharField(max_length=16)),
                        ('note', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                        ('caption', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='reviews', to='pool.caption')),
                        ('reviewer', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='reviews', to=settings.AUTH_USER_MODEL)),
                        ('rewritten_caption', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='pool.caption')),
                    ],
                    options={
                        'db_table': 'annotate_review',
                    },
                ),
                migrations.CreateModel(
                    name='Flag',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('reason', models.CharField(choices=[('low_reward', 'low reward'), ('disagreement', 'reward and CLIPScore disagree'), ('near_duplicate', 'near-duplicate cluster'), ('low_agreement', 'annotators disagree'), ('truncated', 'caption truncated by the encoder')], max_length=32)),
                        ('details', models.JSONField(blank=True, default=dict, help_text='The scores behind the flag.')),
                        ('is_open', models.BooleanField(default=True)),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('caption', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='flags', to='pool.caption')),
                    ],
                    options={
                        'db_table': 'annotate_flag',
                        'indexes': [models.Index(fields=['is_open', 'reason'], name='annotate_fl_is_open_31c340_idx')],
                        'constraints': [models.UniqueConstraint(fields=('caption', 'reason'), name='flag_unique_reason')],
                    },
                ),
            ],
        ),
    ]
