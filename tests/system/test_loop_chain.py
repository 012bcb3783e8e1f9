"""The whole loop through a real Celery worker (default and gpu queues): beat ticks that piled up
while the worker was down start exactly one chain; it retrains, promotes, rescores the pool,
reprioritises the open tasks, refreshes flags and runs a filter; a second start meanwhile is refused."""

from __future__ import annotations

import pytest

from annotate.models import Campaign, Task
from curate.models import FilterRun
from loop.models import LoopRun
from loop.runs import LoopBusy
from loop.schedule import loop_tick
from loop.services import loop_start
from loop.tasks import loop_tick_task
from pool.models import RunStatus
from scoring.active_model import active_model_get
from scoring.models import Score, ScoringRun
from tests.annotate.factories import campaign_with_tasks
from tests.conftest import wait_for
from tests.loop.conftest import simulate_judgments
from tests.scoring.tiny_clip import tiny_clip_encoder_name
from training.models import ModelStatus, RewardModel

pytestmark = [pytest.mark.system, pytest.mark.django_db(transaction=True)]


def test_beat_ticks_start_one_chain_that_promotes_rescores_and_reprioritises(
    tmp_path, settings, celery_worker_process
):
    encoder = tiny_clip_encoder_name(tmp_path / "tiny-clip")
    settings.LOUPE_DEFAULT_ENCODER = encoder
    campaign = campaign_with_tasks(name="System loop", images=48, captions_per_image=4, overlap=2)
    simulate_judgments(campaign, tmp_path)
    open_before = dict(Task.objects.filter(campaign=campaign, status="open").values_list("id", "priority"))
    assert len(open_before) == 8 and set(open_before.values()) == {0.0}
    Campaign.objects.filter(pk=campaign.pk).update(selection_mix={"retrain_after": 20, "batch_size": 4})

    # The worker is down: three ticks queue up. None has run, so nothing exists yet.
    for _ in range(3):
        loop_tick_task.delay(filter_rule={"top_percent": 50})
    assert not LoopRun.objects.exists()

    worker = celery_worker_process(
        queues="default,gpu",
        extra_env={
            "LOUPE_DEFAULT_ENCODER": encoder,
            "LOUPE_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "LOUPE_EMBEDDING_CACHE_DIR": str(settings.EMBEDDING_CACHE_DIR),
            "LOUPE_MODEL_DIR": str(settings.MODEL_DIR),
            "LOUPE_EXPORT_DIR": str(settings.EXPORT_DIR),
            "LOUPE_SCORING_LOADER_WORKERS": "0",
        },
    )
    run = wait_for(
        LoopRun.objects.first, timeout=120, message=f"a loop run; worker log:\n{worker.log()[-3000:]}"
    )
    assert run.trigger == "beat"
    if not LoopRun.objects.get(pk=run.pk).is_finished:
        with pytest.raises(LoopBusy):
            loop_start(campaign=campaign, enqueue=False)
        assert loop_tick().startswith("busy")

    wait_for(
        lambda: LoopRun.objects.get(pk=run.pk).is_finished,
        timeout=480,
        interval=0.5,
        message=f"the chain to finish; worker log:\n{worker.log()[-4000:]}",
    )
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, f"{run.error}\n{run.log}\n{worker.log()[-4000:]}"
    assert LoopRun.objects.count() == 1  # the piled-up ticks found the chain and did nothing
    assert run.step == "filter" and run.done == run.total

    model = RewardModel.objects.get()
    assert model.status == ModelStatus.ACTIVE
    assert active_model_get(encoder=encoder).version == model.version
    scoring = ScoringRun.objects.get()
    assert scoring.status == RunStatus.SUCCEEDED and scoring.reward_model_version == model.version
    assert Score.objects.filter(reward_model_version=model.version, reward__isnull=False).count() == 48 * 4

    open_after = dict(Task.objects.filter(id__in=open_before).values_list("id", "priority"))
    assert open_after != open_before
    assert sum(p > 0.5 for p in open_after.values()) == 4  # the active-learning batch heads the queue
    assert run.summary["priorities"]["model_version"] == model.version
    # The default mix is the batch strategy (informativeness from the model x coverage), see docs/loop.md.
    assert run.summary["priorities"]["strategies"] == ["batch"]
    assert run.summary["flags"]  # refreshed for the new model
    filtered = FilterRun.objects.get()
    assert filtered.status == RunStatus.SUCCEEDED and filtered.reward_model_version == model.version
    assert 0 < filtered.kept < filtered.considered
