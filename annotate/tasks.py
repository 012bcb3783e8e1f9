"""Celery tasks of the annotation workflow (default queue)."""

from __future__ import annotations

from celery import shared_task

from annotate import services


@shared_task(name="annotate.assignments_expire")
def assignments_expire() -> int:
    """Periodic sweep (e.g. every minute in beat) returning timed-out assignments to the queue.

    The claim query also expires lazily, so the queue is right even when beat is not running; this keeps
    the admin's counts of held tasks honest between claims.
    """
    total = 0
    while True:
        n = services.assignments_expire()
        total += n
        if n == 0:
            return total


@shared_task(name="annotate.campaign_tasks_build")
def campaign_tasks_build(campaign_id: int, limit: int | None = None) -> int:
    from annotate.models import Campaign

    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None:
        return 0
    return services.campaign_tasks_build(campaign=campaign, limit=limit)
