"""The Celery app. Workers: ``celery -A config worker -Q default`` (CPU) and ``-Q gpu`` (one process per GPU)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("loupe")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
