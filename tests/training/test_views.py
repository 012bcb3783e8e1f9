"""The /models/ pages: admin only, list + chart, detail report, promote/rollback, start training."""

from __future__ import annotations

import pytest
from django.urls import reverse

from pool.models import RunStatus
from scoring.active_model import active_model_get
from training.candidates import reward_model_train
from training.config import TrainConfig
from training.models import ModelStatus, RewardModel, TrainingRun
from training.services import reward_model_promote

ENC = "offline:effnet-minilm"
FAST = TrainConfig(epochs=2, hidden=8, n_heads=2, batch_size=4096)


@pytest.fixture
def trained(judged):
    return reward_model_train(campaign=judged.campaign, encoder=ENC, config=FAST)


def test_pages_need_the_admin_role(client, curator, judged):
    assert client.get(reverse("training:model_list")).status_code == 302
    client.force_login(curator)
    assert client.get(reverse("training:model_list")).status_code == 403


def test_list_shows_versions_metrics_and_charts(client, admin_user, trained):
    client.force_login(admin_user)
    html = client.get(reverse("training:model_list")).content.decode()
    assert f"v{trained.version}" in html
    assert f"{trained.metrics['clipscore_accuracy']:.3f}" in html
    assert html.count('<svg class="chart"') == 2
    assert "CLIPScore" in html and "reward model" in html


def test_detail_shows_the_evaluation_report(client, admin_user, trained):
    client.force_login(admin_user)
    html = client.get(reverse("training:model_detail", args=[trained.version])).content.decode()
    assert "Pairwise accuracy" in html and "Spearman" in html and "trained" in html
    assert f"{trained.metrics['accuracy']:.3f}" in html
    assert client.get(reverse("training:model_detail", args=[999])).status_code == 404


def test_promote_button_activates_and_logs(client, admin_user, trained):
    client.force_login(admin_user)
    response = client.post(reverse("training:model_promote", args=[trained.version]), {"note": "looks good"})
    assert response.status_code == 302
    trained.refresh_from_db()
    assert trained.status == ModelStatus.ACTIVE
    assert trained.events.filter(action="promoted", note="looks good", user=admin_user).exists()
    assert active_model_get(encoder=ENC).version == trained.version


def test_promote_needs_post(client, admin_user, trained):
    client.force_login(admin_user)
    assert client.get(reverse("training:model_promote", args=[trained.version])).status_code == 405


def test_rollback_button_restores_the_previous_model(client, admin_user, judged):
    first = reward_model_promote(model=reward_model_train(campaign=judged.campaign, encoder=ENC, config=FAST))
    reward_model_promote(model=reward_model_train(campaign=judged.campaign, encoder=ENC, config=FAST))
    client.force_login(admin_user)
    response = client.post(reverse("training:model_rollback"), {"encoder": ENC})
    assert response.status_code == 302
    first.refresh_from_db()
    assert first.status == ModelStatus.ACTIVE


def test_rollback_without_earlier_model_shows_an_error(client, admin_user, trained):
    client.force_login(admin_user)
    response = client.post(reverse("training:model_rollback"), {"encoder": ENC}, follow=True)
    assert "No earlier active model" in response.content.decode()


def test_start_form_queues_a_run_that_trains_a_model(
    client, admin_user, judged, eager_celery, django_capture_on_commit_callbacks
):
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("training:training_start"),
            {
                "campaign": judged.campaign.pk,
                "encoder": ENC,
                "epochs": 3,
                "seed": 1,
                "promote_if_better": "on",
            },
        )
    assert response.status_code == 302
    run = TrainingRun.objects.get()
    assert run.status == RunStatus.SUCCEEDED and run.created_by == admin_user
    model = RewardModel.objects.get()
    assert run.model == model and model.config["epochs"] == 3 and model.config["seed"] == 1
    actions = list(model.events.order_by("created_at", "id").values_list("action", flat=True))
    # Seed 1, three epochs: the candidate beats CLIPScore on the held-out pairs and is promoted.
    assert actions == ["trained", "gate_passed", "promoted"]
    assert model.status == "active"


def test_start_form_rejects_bad_input(client, admin_user, judged):
    client.force_login(admin_user)
    response = client.post(reverse("training:training_start"), {"campaign": judged.campaign.pk, "epochs": 0})
    assert response.status_code == 400
    assert not TrainingRun.objects.exists()


def test_run_progress_partial(client, admin_user, judged):
    run = TrainingRun.objects.create(
        campaign=judged.campaign, encoder=ENC, total=10, done=4, status="running"
    )
    client.force_login(admin_user)
    html = client.get(reverse("training:training_run_progress", args=[run.pk])).content.decode()
    assert 'value="4"' in html and "hx-get" in html
