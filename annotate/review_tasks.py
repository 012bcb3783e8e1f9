"""Celery tasks of curator review (default queue): flag refresh and rewrite suggestions."""

from __future__ import annotations

from celery import shared_task

from annotate.flags import flags_refresh
from annotate.rewrite import rewrite_suggest
from pool.models import Caption


@shared_task(name="annotate.review_tasks.flags_refresh_task")
def flags_refresh_task(encoder: str, reward_model_version: int, low_reward_share: float = 0.1) -> dict:
    """Idempotent: flags are upserts on (caption, reason) and stale ones are closed."""
    return flags_refresh(
        encoder=encoder, reward_model_version=reward_model_version, low_reward_share=low_reward_share
    )


@shared_task(name="annotate.review_tasks.rewrite_suggest_task")
def rewrite_suggest_task(caption_id: int) -> None:
    """Generate a rewrite suggestion for one caption; rerunning replaces the stored suggestion."""
    caption = Caption.objects.filter(pk=caption_id).first()
    if caption is not None:
        rewrite_suggest(caption=caption)
