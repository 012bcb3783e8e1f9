"""The whole chain run in-process (loop_run_inline) on a small pool with the tiny open_clip encoder."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from annotate.models import Judgment, Task
from curate.models import FilterRun
from loop.models import LoopRun
from loop.services import loop_run_inline, loop_start
from pool.models import RunStatus
from scoring.active_model import active_model_get
from scoring.models import Score, ScoringRun
from tests.annotate.factories import campaign_with_tasks
from tests.loop.conftest import simulate_judgments
from tests.scoring.tiny_clip import tiny_clip_encoder_name
from training.models import ModelStatus, RewardModel, TrainingRun

SMALL_TRAINING = {"epochs": 4, "hidden": 16, "n_heads": 3, "patience": 2}


@pytest.fixture
def tiny_encoder(settings, tmp_path_factory):
    name = tiny_clip_encoder_name(tmp_path_factory.mktemp("tiny-clip"))
    settings.LOUPE_DEFAULT_ENCODER = name
    return name


@pytest.fixture
def judged_campaign(db, tiny_encoder, tmp_path):
    campaign = campaign_with_tasks(name="Chain", images=40, captions_per_image=4, overlap=2)
    simulate_judgments(campaign, tmp_path)
    assert Judgment.objects.count() == 80
    return campaign


def test_chain_promotes_rescores_reprioritises_and_filters(judged_campaign, tiny_encoder):
    # Complete tasks keep their priority; reopen half so the priorities step has open tasks to order.
    reopened = list(Task.objects.order_by("id").values_list("id", flat=True)[:12])
    assert Task.objects.filter(status="open").count() == 0
    Task.objects.filter(id__in=reopened).update(status="open", priority=0.0)
    run = loop_start(
        campaign=judged_campaign, enqueue=False, filter_rule={"top_percent": 50}, train_config=SMALL_TRAINING
    )
    run = loop_run_inline(run=run, timeout=300)
    assert run.status == RunStatus.SUCCEEDED, run.error + run.log
    assert run.step == "filter" and run.done == run.total == 7
    model = RewardModel.objects.get()
    assert model.status == ModelStatus.ACTIVE
    assert active_model_get(encoder=tiny_encoder).version == model.version
    assert TrainingRun.objects.get().status == RunStatus.SUCCEEDED
    assert ScoringRun.objects.get().status == RunStatus.SUCCEEDED
    assert Score.objects.filter(reward_model_version=model.version, reward__isnull=False).count() == 160
    assert run.summary["priorities"]["tasks"] == 12 and run.summary["priorities"]["changed"] > 0
    assert Task.objects.filter(id__in=reopened, priority__gt=0).count() == 12
    assert FilterRun.objects.get().status == RunStatus.SUCCEEDED
    assert run.summary["evaluation"]["candidate"]["accuracy"] is not None


def test_failed_retrain_keeps_the_active_model_and_shows_the_error(judged_campaign, tiny_encoder):
    first = loop_run_inline(
        run=loop_start(campaign=judged_campaign, enqueue=False, train_config=SMALL_TRAINING), timeout=300
    )
    assert first.status == RunStatus.SUCCEEDED, first.error + first.log
    active = RewardModel.objects.get(status=ModelStatus.ACTIVE)
    Judgment.objects.all().delete()  # too few judgments now: training refuses with a clear error

    failed = loop_run_inline(
        run=loop_start(campaign=judged_campaign, enqueue=False, train_config=SMALL_TRAINING), timeout=300
    )
    assert failed.status == RunStatus.FAILED
    assert failed.error.startswith("Step 'retrain' failed:") and "judgment" in failed.error
    assert failed.step == ""
    assert RewardModel.objects.get(status=ModelStatus.ACTIVE).pk == active.pk
    assert active_model_get(encoder=tiny_encoder).version == active.version
    assert TrainingRun.objects.order_by("-pk").first().status == RunStatus.FAILED
    assert not LoopRun.objects.filter(status__in=["queued", "running"]).exists()


def test_refused_candidate_skips_rescore_and_flags(judged_campaign, tiny_encoder, settings):
    first = loop_run_inline(
        run=loop_start(campaign=judged_campaign, enqueue=False, train_config=SMALL_TRAINING), timeout=300
    )
    assert first.status == RunStatus.SUCCEEDED, first.error + first.log
    settings.LOUPE_GATE_TOLERANCE = -1.0  # the candidate must beat the active model by 100 points
    second = loop_run_inline(
        run=loop_start(campaign=judged_campaign, enqueue=False, train_config=SMALL_TRAINING), timeout=300
    )
    assert second.status == RunStatus.SUCCEEDED
    assert second.summary["promoted"] is False
    assert "refused by the gate" in second.log and "skipped: no new model to score with" in second.log
    assert RewardModel.objects.get(status=ModelStatus.ACTIVE).pk == first.params["candidate_id"]
    assert ScoringRun.objects.count() == 1


def test_run_loop_sync_runs_the_chain_in_process(judged_campaign, tiny_encoder):
    out = io.StringIO()
    call_command("run_loop", campaign=judged_campaign.name, top_percent=40, sync=True, stdout=out)
    run = LoopRun.objects.get()
    assert run.status == RunStatus.SUCCEEDED, run.error + run.log
    assert f"Loop run {run.pk} succeeded after step 'filter'" in out.getvalue()
    assert FilterRun.objects.get().rule["top_percent"] == 40


def test_run_loop_is_refused_while_a_chain_is_queued(judged_campaign):
    from django.core.management import CommandError

    loop_start(campaign=judged_campaign, enqueue=False)
    with pytest.raises(CommandError, match="already queued"):
        call_command("run_loop", campaign=judged_campaign.name, sync=True, stdout=io.StringIO())
