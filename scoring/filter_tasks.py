"""Celery tasks (default queue)."""

from __future__ import annotations
