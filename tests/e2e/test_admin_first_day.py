"""An admin in the browser: the Models table fits a 1400 px window, and promoting a model that does worse
than the active one asks for a confirmation that says by how much, then queues a rescore."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.urls import reverse

from accounts.roles import ROLES
from scoring.models import ScoringRun
from tests.annotate.factories import campaign_with_tasks
from tests.conftest import make_user
from training.models import ModelStatus, RewardModel

ENCODER = "offline:effnet-minilm"


def _model(
    version: int, *, status: str, accuracy: float, active: dict | None = None, campaign=None
) -> RewardModel:
    path = settings.MODEL_DIR / f"reward-v{version}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a real checkpoint")
    metrics = {
        "accuracy": accuracy,
        "tie_accuracy": accuracy - 0.1,
        "clipscore_accuracy": 0.514,
        "human_ceiling": 0.943,
        "ece": 0.012,
        "n_pairs": 1398,
        "split": {
            "judgments": {"train": 1400, "validation": 200, "test": 446},
            "images": {"train": 497, "validation": 71, "test": 142},
            "mode": "each",
        },
    }
    if active:
        metrics["active"] = active
    return RewardModel.objects.create(
        version=version,
        encoder=ENCODER,
        campaign=campaign,
        checkpoint=str(path),
        checkpoint_sha256="",
        metrics=metrics,
        config={"epochs": 40, "hidden": 128, "head": {"image_dim": 1664, "text_dim": 384, "n_heads": 5}},
        n_judgments=2046,
        n_pairs=12276,
        status=status,
    )


@pytest.mark.django_db(transaction=True)
def test_promoting_a_worse_model_asks_for_confirmation_and_queues_a_rescore(
    page, live_server, browser_login, artifacts_dir
):
    for role in ROLES:
        Group.objects.get_or_create(name=role)
    campaign = campaign_with_tasks(name="Demo: which caption describes the picture?", images=1)
    _model(1, status=ModelStatus.ACTIVE, accuracy=0.644, campaign=campaign)
    _model(
        2,
        status=ModelStatus.CANDIDATE,
        accuracy=0.612,
        active={"version": 1, "accuracy": 0.644},
        campaign=campaign,
    )
    make_user("ada", "admin")
    reverse("training:model_list")
    browser_login("ada")

    page.goto(f"{live_server.url}/models/")
    # CLIPScore, human ceiling and ECE are on screen at 1400 px, with no horizontal scrolling.
    fits = page.eval_on_selector(".models-table", "t => t.scrollWidth <= t.parentElement.clientWidth")
    assert fits
    for header in ("CLIPScore", "Human ceiling", "ECE"):
        box = page.locator(f".models-table th:has-text('{header}')").bounding_box()
        assert box and box["x"] + box["width"] <= 1400
    page.screenshot(path=str(artifacts_dir / "admin-models.png"), full_page=True)

    page.goto(f"{live_server.url}/models/2/")
    assert "worse by 3.2 points" in page.inner_text(".comparison")
    page.fill("input[name=note]", "trying the new split")
    page.click("button:has-text('Promote to active')")
    page.wait_for_selector("#confirm-title")
    assert "3.2 points worse" in page.inner_text(".confirm-card")
    page.screenshot(path=str(artifacts_dir / "admin-promote-confirm.png"), full_page=True)
    assert RewardModel.objects.get(version=2).status == ModelStatus.CANDIDATE  # nothing changed yet
    page.click("button:has-text('Promote anyway')")
    page.wait_for_selector(".messages")
    assert "Scoring run" in page.inner_text(".messages")
    assert RewardModel.objects.get(version=2).status == ModelStatus.ACTIVE
    assert RewardModel.objects.get(version=1).status == ModelStatus.RETIRED
    assert ScoringRun.objects.get().reward_model_version == 2
    event = RewardModel.objects.get(version=2).events.get(action="promoted")
    assert "confirmed: 3.2 points worse than v1" in event.note
    # The configuration and the split read as tables, not Python dicts.
    assert page.locator(".data-table").count() >= 1 and page.locator(".split-table").count() == 1
    assert "{'" not in page.inner_text("main")
    page.screenshot(path=str(artifacts_dir / "admin-model-detail.png"), full_page=True)
