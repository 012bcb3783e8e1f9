"""Celery tasks of the training app (routed to the ``gpu`` queue by module)."""

from __future__ import annotations

import logging

from celery import shared_task

from pool.models import RunStatus
from pool.run_health import run_heartbeat
from training.models import TrainingRun

logger = logging.getLogger(__name__)

# A run that finds the lock taken waits and tries again rather than failing: trainings queue up.
BUSY_RETRY_SECONDS = 30


@shared_task(bind=True, max_retries=120, acks_late=True)
def training_run_execute(self, run_id: int) -> None:
    """Train frozen heads or fine-tune the encoder (``params["finetune"]``), and optionally gate + promote,
    for one TrainingRun. Safe to run twice: a finished run is
    left alone, and a run found RUNNING is only redone when the training lock is free, i.e. when the
    worker that ran it died."""
    from training.candidates import TrainingBusy, reward_model_finetune, reward_model_gate, reward_model_train
    from training.config import TrainConfig
    from training.finetune_config import TrainingCancelled
    from training.services import rescore_after_activation, reward_model_promote

    run = TrainingRun.objects.select_related("campaign", "created_by").filter(pk=run_id).first()
    if run is None or run.is_finished:
        return
    if run.model_id is not None:
        # Registered before the worker died, not yet marked: finishing it must not train again.
        TrainingRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED)
        return
    if run.campaign is None:
        TrainingRun.objects.filter(pk=run.pk).update(
            status=RunStatus.FAILED, error="The run's campaign was deleted."
        )
        return
    config = TrainConfig(**(run.params or {}).get("config", {}))
    finetune_params = (run.params or {}).get("finetune")
    run_heartbeat(model=TrainingRun, run_id=run.pk)
    try:
        if finetune_params is not None:
            # A fine-tune: FinetuneError (a bad request, out of memory) fails the run with its message,
            # a cancel between epochs ends it cancelled; neither is retried.
            model = reward_model_finetune(
                campaign=run.campaign,
                base_encoder=run.encoder,
                finetune_config=finetune_params,
                user=run.created_by,
                run=run,
            )
        else:
            model = reward_model_train(
                campaign=run.campaign, encoder=run.encoder, config=config, user=run.created_by, run=run
            )
    except TrainingBusy as exc:
        TrainingRun.objects.filter(pk=run.pk).update(log="Waiting: another training is running.")
        raise self.retry(countdown=BUSY_RETRY_SECONDS, exc=exc) from exc
    except TrainingCancelled:
        logger.info("training run %s cancelled", run_id)
        return  # the run row says cancelled; nothing was registered
    except Exception:
        logger.exception("training run %s failed", run_id)
        return  # the run row holds the error; retrying a data error would fail the same way
    if (run.params or {}).get("promote_if_better") and reward_model_gate(
        candidate=model, user=run.created_by
    ):
        reward_model_promote(
            model=model, user=run.created_by, note=f"gate passed after training run {run.pk}"
        )
        rescore_after_activation(model=model, user=run.created_by)
