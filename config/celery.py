"""The Celery app. Workers: ``celery -A config worker -Q default`` (CPU) and ``-Q gpu`` (one process per GPU)."""

from __future__ import annotations

import os
import warnings

from celery import Celery
from celery.exceptions import SecurityWarning

if os.environ.get("LOUPE_DEMO"):
    # The demo often runs as root in a throwaway container or VM, where Celery's "running the worker with
    # superuser privileges" warning has nothing to act on. Everywhere else the warning stays: a
    # production worker should run as an unprivileged user.
    warnings.filterwarnings("ignore", category=SecurityWarning)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("loupe")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
