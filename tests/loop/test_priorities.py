"""task_priorities_refresh (training/loop.py): priorities from the active model and the campaign's mix."""

from __future__ import annotations

import pytest
import torch

from annotate.models import Task
from scoring.active_model import ActiveModel, active_model_set
from scoring.reward_model import RewardEnsemble, RewardHeadConfig, save_checkpoint
from tests.scoring.tiny_clip import tiny_clip_encoder_name
from training.priorities import task_priorities_refresh


@pytest.fixture
def tiny_encoder(tmp_path_factory):
    return tiny_clip_encoder_name(tmp_path_factory.mktemp("tiny-clip"))


def _activate_random_model(encoder: str, path) -> None:
    torch.manual_seed(0)
    model = RewardEnsemble(
        RewardHeadConfig(image_dim=32, text_dim=32, hidden=8, n_heads=4, criteria=["accuracy"])
    )
    sha = save_checkpoint(path, model, {"encoder": encoder, "version": 7})
    active_model_set(model=ActiveModel(encoder, 7, str(path), sha), encoder=encoder)


def test_cold_start_uses_the_default_batch_strategy_and_sets_a_batch(campaign, tiny_encoder):
    campaign.selection_mix = {"batch_size": 2}
    campaign.save()
    summary = task_priorities_refresh(campaign=campaign, encoder=tiny_encoder, seed=1)
    assert summary["tasks"] == 6 and summary["model_version"] is None
    assert set(summary["strategies"]) == {"batch"}  # the default mix; cold: a random draw
    priorities = sorted(
        Task.objects.filter(campaign=campaign).values_list("priority", flat=True), reverse=True
    )
    assert priorities[0] <= 1.0 and priorities[1] > 0.5 and priorities[2] < 0.5
    assert summary["changed"] == 6


def test_with_an_active_model_every_strategy_contributes(campaign, tiny_encoder, tmp_path):
    _activate_random_model(tiny_encoder, tmp_path / "model.pt")
    campaign.selection_mix = {
        "uncertainty": 1,
        "margin": 1,
        "disagreement": 1,
        "diversity": 1,
        "random": 1,
        "batch_size": 5,
    }
    campaign.save()
    summary = task_priorities_refresh(campaign=campaign, encoder=tiny_encoder, seed=1)
    assert summary["model_version"] == 7
    assert set(summary["strategies"]) == {"uncertainty", "margin", "disagreement", "diversity", "random"}
    assert Task.objects.filter(campaign=campaign, priority__gt=0.5).count() == 5


def test_default_mix_with_an_active_model_uses_the_batch_strategy(campaign, tiny_encoder, tmp_path):
    _activate_random_model(tiny_encoder, tmp_path / "model.pt")
    campaign.selection_mix = {"batch_size": 3}
    campaign.save()
    summary = task_priorities_refresh(campaign=campaign, encoder=tiny_encoder, seed=1)
    assert summary["model_version"] == 7
    assert set(summary["strategies"]) == {"batch"}
    assert Task.objects.filter(campaign=campaign, priority__gt=0.5).count() == 3


def test_refresh_is_deterministic_for_a_seed(campaign, tiny_encoder):
    task_priorities_refresh(campaign=campaign, encoder=tiny_encoder, seed=3)
    first = dict(Task.objects.values_list("id", "priority"))
    summary = task_priorities_refresh(campaign=campaign, encoder=tiny_encoder, seed=3)
    assert dict(Task.objects.values_list("id", "priority")) == first
    assert summary["changed"] == 0


def test_completed_tasks_keep_their_priority(campaign, tiny_encoder):
    done = Task.objects.filter(campaign=campaign).first()
    Task.objects.filter(pk=done.pk).update(status="complete", judgment_count=2, priority=0.123)
    summary = task_priorities_refresh(campaign=campaign, encoder=tiny_encoder, seed=0)
    assert summary["tasks"] == 5
    done.refresh_from_db()
    assert done.priority == 0.123
