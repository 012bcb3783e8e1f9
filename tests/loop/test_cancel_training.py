"""Cancelling a loop run reaches its training: the training run is cancelled and stops between epochs,
no model is registered, and the console shows both as cancelled."""

from __future__ import annotations

import pytest
from django.urls import reverse

from loop.models import LoopRun
from loop.services import loop_cancel, loop_run_inline, loop_start
from pool.models import RunStatus
from tests.annotate.factories import campaign_with_tasks
from tests.loop.conftest import simulate_judgments
from tests.scoring.tiny_clip import tiny_clip_encoder_name
from training import candidates
from training.models import RewardModel, TrainingRun


@pytest.fixture
def judged_campaign(db, settings, tmp_path_factory, tmp_path):
    settings.LOUPE_DEFAULT_ENCODER = tiny_clip_encoder_name(tmp_path_factory.mktemp("tiny-clip"))
    campaign = campaign_with_tasks(name="Cancel me", images=40, captions_per_image=4, overlap=2)
    simulate_judgments(campaign, tmp_path)
    return campaign


def test_cancelling_the_loop_stops_its_training_between_epochs(
    judged_campaign, monkeypatch, client, admin_user
):
    run = loop_start(
        campaign=judged_campaign,
        enqueue=False,
        train_config={"epochs": 30, "hidden": 16, "n_heads": 2, "patience": 100},
    )
    real_train = candidates.train
    epochs_seen = []

    def train_cancelled_at_epoch_3(config, data, progress=None, **kwargs):
        def progress_and_cancel(epoch, epochs, record):
            epochs_seen.append(epoch)
            if epoch == 3:
                # What the console's Cancel button does, from another process in real life.
                loop_cancel(run=LoopRun.objects.get(pk=run.pk), user=admin_user)
            progress(epoch, epochs, record)

        return real_train(config, data, progress=progress_and_cancel, **kwargs)

    monkeypatch.setattr(candidates, "train", train_cancelled_at_epoch_3)
    run = loop_run_inline(run=run, timeout=300)

    assert run.status == RunStatus.CANCELLED
    training = TrainingRun.objects.get()
    assert training.status == RunStatus.CANCELLED
    assert max(epochs_seen) == 3 and training.done == 3  # stopped between epochs, not after 30
    assert "cancelled after 3 of 30 epochs" in training.log
    assert not RewardModel.objects.exists()
    client.force_login(admin_user)
    page = client.get(reverse("console:job_detail", args=["loop", run.pk])).content.decode()
    assert "run-status-cancelled" in page and "cancelled after 3 of 30 epochs" in page
    assert f"/console/jobs/loop/{run.pk}/cancel/" not in page  # no Cancel button on a cancelled run
