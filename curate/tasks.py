"""Celery tasks of curation (default queue: SQL and file work, no GPU): flag refresh, rewrite
suggestions, filter runs, their downstream checks and exports."""

from __future__ import annotations

from celery import shared_task

from curate.downstream import filter_run_downstream_evaluate
from curate.exports import export_execute as export_execute_service
from curate.filtering import filter_run_execute as filter_run_execute_service
from curate.flags import flags_refresh
from curate.models import Export, FilterRun
from curate.rewrite import rewrite_suggest
from pool.models import Caption


@shared_task(name="curate.tasks.flags_refresh_task")
def flags_refresh_task(encoder: str, reward_model_version: int, low_reward_share: float = 0.1) -> dict:
    """Idempotent: flags are upserts on (caption, reason) and stale ones are closed."""
    return flags_refresh(
        encoder=encoder, reward_model_version=reward_model_version, low_reward_share=low_reward_share
    )


@shared_task(name="curate.tasks.rewrite_suggest_task")
def rewrite_suggest_task(caption_id: int) -> None:
    """Generate a rewrite suggestion for one caption; rerunning replaces the stored suggestion."""
    caption = Caption.objects.filter(pk=caption_id).first()
    if caption is not None:
        rewrite_suggest(caption=caption)


@shared_task(name="curate.tasks.filter_run_execute")
def filter_run_execute(run_id: int) -> None:
    """Idempotent: a succeeded run is left as it is; the kept file is replaced atomically."""
    run = FilterRun.objects.filter(pk=run_id).first()
    if run is not None:
        filter_run_execute_service(run=run)


@shared_task(name="curate.tasks.export_execute")
def export_execute(export_id: int) -> None:
    """Idempotent: a succeeded export is left as it is; each attempt writes into its own temp folder."""
    export = Export.objects.filter(pk=export_id).first()
    if export is not None:
        export_execute_service(export=export)


@shared_task(name="curate.tasks.rewrite_run_task", acks_late=True)
def rewrite_run_task(run_id: int) -> None:
    """Idempotent: originals that already have a model rewrite are skipped. Sent to the gpu queue."""
    from curate.model_captions import rewrite_run_execute, rewrite_run_fail
    from curate.models import RewriteRun

    run = RewriteRun.objects.filter(pk=run_id).first()
    if run is None:
        return
    try:
        rewrite_run_execute(run=run)
    except Exception as exc:
        rewrite_run_fail(run_id=run_id, error=f"{type(exc).__name__}: {exc}")
        raise


@shared_task(name="curate.tasks.filter_run_downstream_task")
def filter_run_downstream_task(run_id: int, seeds: int = 3) -> None:
    """Safe to run twice: each attempt recomputes and replaces ``summary["downstream"]``. Default queue:
    the downstream model is a pair of small projections on cached features, minutes on a CPU."""
    run = FilterRun.objects.filter(pk=run_id).first()
    if run is not None:
        filter_run_downstream_evaluate(run=run, seeds=seeds)
