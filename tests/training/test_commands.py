"""``manage.py train_reward``."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from training.models import ModelStatus, RewardModel


def test_train_reward_prints_the_report_and_promotes_if_better(judged):
    out = io.StringIO()
    call_command(
        "train_reward",
        "--campaign",
        judged.campaign.name,
        "--epochs",
        "25",
        "--seed",
        "1",
        "--promote-if-better",
        stdout=out,
        stderr=io.StringIO(),
    )
    text = out.getvalue()
    model = RewardModel.objects.get()
    assert f"Reward model v{model.version}" in text
    assert "CLIPScore" in text and "human ceiling" in text and "Spearman accuracy" in text
    assert model.config["epochs"] == 25 and model.config["seed"] == 1
    if model.metrics["gate"]["passed"]:
        assert model.status == ModelStatus.ACTIVE and "Gate passed" in text
    else:
        assert model.status == ModelStatus.CANDIDATE and "Gate refused" in text


def test_train_reward_unknown_campaign_lists_the_known_ones(judged):
    with pytest.raises(CommandError, match="No campaign named 'nope'.*campaign"):
        call_command("train_reward", "--campaign", "nope")


def test_train_reward_too_few_judgments_fails_with_the_reason(db, synthetic_features):
    from tests.training.factories import judged_campaign

    small = judged_campaign(name="small", n_images=5)
    synthetic_features(small)
    with pytest.raises(CommandError, match="has 5 judgments; .* at least 30"):
        call_command("train_reward", "--campaign", "small", stderr=io.StringIO())
