"""The annotation screens through the Django test client: the no-JavaScript form flow and htmx swaps."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.urls import reverse

from annotate import services, views
from annotate.models import Assignment, Campaign, Judgment, Task
from tests.annotate.factories import answer_for, campaign_with_tasks, pool_create
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign():
    return campaign_with_tasks(
        images=3, overlap=2, instructions="Read **carefully**.\n\n<script>x()</script>"
    )


def _form_data(task, *, tiers=None, rating=4, client_key=None) -> dict:
    ids = services.task_caption_ids(task)
    tiers = tiers or {cid: i + 1 for i, cid in enumerate(ids)}
    data = {"client_key": str(client_key or uuid.uuid4()), "duration_ms": "4200", "ranking_basis": "form"}
    for cid in ids:
        data[f"tier_{cid}"] = str(tiers[cid]) if tiers.get(cid) else ""
        for key in task.campaign.criterion_keys:
            data[f"rate_{cid}_{key}"] = str(rating)
    return data


def _claimed_task(client, campaign, user) -> Task:
    client.force_login(user)
    response = client.get(reverse("annotate:next", args=[campaign.pk]))
    assert response.status_code == 200
    return Assignment.objects.get(user=user, status="active").task


def test_anonymous_users_are_sent_to_login(client, campaign):
    response = client.get(reverse("annotate:next", args=[campaign.pk]))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_users_without_role_are_refused(client, campaign):
    client.force_login(make_user("norole", None))
    assert client.get(reverse("annotate:campaigns")).status_code == 403


def test_campaign_list_shows_progress(client, campaign, annotator):
    client.force_login(annotator)
    response = client.get(reverse("annotate:campaigns"))
    assert response.status_code == 200
    assert campaign.name in response.content.decode()
    assert "3</b> left in queue" in response.content.decode()


def test_task_page_is_a_plain_form_with_every_field(client, campaign, annotator):
    task = _claimed_task(client, campaign, annotator)
    html = client.get(reverse("annotate:next", args=[campaign.pk])).content.decode()
    ids = services.task_caption_ids(task)
    for cid in ids:
        assert f'name="tier_{cid}"' in html
        for key in campaign.criterion_keys:
            assert html.count(f'name="rate_{cid}_{key}"') == 5
    assert 'name="client_key"' in html
    assert f'action="{reverse("annotate:submit", args=[campaign.pk, task.pk])}"' in html
    # Instructions are Markdown with raw HTML escaped, never executed; no inline script anywhere.
    assert "<strong>carefully</strong>" in html and "&lt;script&gt;x()&lt;/script&gt;" in html
    assert not re.search(r"<script>(?!</script>)", html.replace('<script src="', ""))
    assert task.image.url in html


def test_caption_order_is_stable_for_an_assignment(client, campaign, annotator):
    _claimed_task(client, campaign, annotator)
    url = reverse("annotate:next", args=[campaign.pk])
    first = re.findall(r'data-caption-id="(\d+)"', client.get(url).content.decode())
    second = re.findall(r'data-caption-id="(\d+)"', client.get(url).content.decode())
    assert first == second and len(first) == 4


def test_no_js_submit_with_a_tie_stores_the_judgment_and_redirects_to_the_next_task(
    client, campaign, annotator
):
    task = _claimed_task(client, campaign, annotator)
    ids = services.task_caption_ids(task)
    tiers = {ids[0]: 2, ids[1]: 1, ids[2]: 2, ids[3]: 4}
    response = client.post(
        reverse("annotate:submit", args=[campaign.pk, task.pk]), _form_data(task, tiers=tiers)
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("annotate:next", args=[campaign.pk])
    judgment = Judgment.objects.get()
    assert judgment.ranking == [[ids[1]], sorted([ids[0], ids[2]]), [ids[3]]]
    assert judgment.ratings[str(ids[0])]["accuracy"] == 4
    assert judgment.duration_ms == 4200
    next_page = client.get(response["Location"]).content.decode()
    assert "Saved." in next_page and f"task {task.pk}" not in next_page


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d, ids: d.update({f"tier_{ids[0]}": ""}), "leaves out"),
        (lambda d, ids: d.update({f"rate_{ids[1]}_accuracy": "7"}), "from 1 to 5, not 7"),
        (lambda d, ids: d.pop(f"rate_{ids[2]}_vividness"), "Rate Vividness"),
        (lambda d, ids: d.update({f"rate_{ids[0]}_accuracy": "abc"}), "whole number from 1 to 5"),
        (lambda d, ids: d.update({"client_key": "not-a-key"}), "submission key"),
    ],
)
def test_bad_form_submits_get_400_with_the_message_and_store_nothing(
    client, campaign, annotator, mutate, message
):
    task = _claimed_task(client, campaign, annotator)
    data = _form_data(task)
    mutate(data, services.task_caption_ids(task))
    response = client.post(reverse("annotate:submit", args=[campaign.pk, task.pk]), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Judgment.objects.count() == 0
    # The form comes back with what was entered, so nothing has to be redone.
    assert 'value="4" checked' in response.content.decode()


def test_submit_for_a_task_of_someone_else_gets_403(client, campaign, annotator):
    other = make_user("otto", "annotator")
    task = services.task_next(campaign=campaign, user=other).task
    client.force_login(annotator)
    response = client.post(reverse("annotate:submit", args=[campaign.pk, task.pk]), _form_data(task))
    assert response.status_code == 403
    assert "assigned to another annotator" in response.content.decode()
    assert Judgment.objects.count() == 0


def test_submit_after_expiry_gets_410(client, campaign, annotator):
    task = _claimed_task(client, campaign, annotator)
    Assignment.objects.update(expires_at="2000-01-01T00:00:00Z")
    response = client.post(reverse("annotate:submit", args=[campaign.pk, task.pk]), _form_data(task))
    assert response.status_code == 410
    assert "ran out" in response.content.decode()
    assert Judgment.objects.count() == 0


def test_the_same_submit_twice_stores_one_judgment(client, campaign, annotator):
    task = _claimed_task(client, campaign, annotator)
    data = _form_data(task)
    url = reverse("annotate:submit", args=[campaign.pk, task.pk])
    assert client.post(url, data).status_code == 302
    assert client.post(url, data).status_code == 302
    assert Judgment.objects.count() == 1
    fresh = dict(data, client_key=str(uuid.uuid4()))
    response = client.post(url, fresh)
    assert response.status_code == 409 and "already submitted" in response.content.decode()
    assert Judgment.objects.count() == 1


def test_htmx_submit_returns_the_next_task_partial_and_a_progress_event(client, campaign, annotator):
    task = _claimed_task(client, campaign, annotator)
    response = client.post(
        reverse("annotate:submit", args=[campaign.pk, task.pk]), _form_data(task), HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert response["HX-Trigger"] == "annotate-progress"
    html = response.content.decode()
    assert "<html" not in html and 'id="task-form"' in html
    next_task = Assignment.objects.get(user=annotator, status="active").task
    assert next_task.pk != task.pk and f"task {next_task.pk}" in html


def test_progress_partial_counts_done_work(client, campaign, annotator):
    task = _claimed_task(client, campaign, annotator)
    client.post(reverse("annotate:submit", args=[campaign.pk, task.pk]), _form_data(task))
    html = client.get(
        reverse("annotate:progress", args=[campaign.pk]), HTTP_HX_REQUEST="true"
    ).content.decode()
    assert 'data-progress="done_today">1<' in html and 'data-progress="done_total">1<' in html


def test_skip_needs_a_reason_and_then_moves_on(client, campaign, annotator):
    task = _claimed_task(client, campaign, annotator)
    url = reverse("annotate:skip", args=[campaign.pk, task.pk])
    response = client.post(url, {"reason": ""})
    assert response.status_code == 400 and "Say why" in response.content.decode()
    response = client.post(url, {"reason": "other", "reason_other": "Blurry"})
    assert response.status_code == 302
    assert Assignment.objects.get(task=task, user=annotator).skip_reason == "Blurry"


def test_empty_queue_says_so(client, annotator):
    campaign = campaign_with_tasks(images=1, overlap=1)
    task = _claimed_task(client, campaign, annotator)
    client.post(reverse("annotate:submit", args=[campaign.pk, task.pk]), _form_data(task))
    html = client.get(reverse("annotate:next", args=[campaign.pk])).content.decode()
    assert "Nothing left for you here" in html


def test_campaign_page_for_admins_shows_stats_and_charts(client, campaign, admin_user, annotators):
    for user in annotators(2):
        assignment = services.task_next(campaign=campaign, user=user)
        ranking, ratings = answer_for(assignment.task)
        services.judgment_submit(
            user=user, task=assignment.task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    client.force_login(admin_user)
    html = client.get(reverse("annotate:campaign", args=[campaign.pk])).content.decode()
    assert "Krippendorff" in html and html.count('<svg class="chart"') == 2
    assert "ann0" in html and "ann1" in html


def test_campaign_page_is_admin_only(client, campaign, annotator):
    client.force_login(annotator)
    assert client.get(reverse("annotate:campaign", args=[campaign.pk])).status_code == 403


def test_new_campaign_form_creates_and_builds(client, admin_user):
    campaign_with_tasks(name="existing", images=2)
    client.force_login(admin_user)
    response = client.post(
        reverse("annotate:campaign_new"),
        {
            "name": "Fresh",
            "instructions": "",
            "captions_per_task": 3,
            "overlap": 2,
            "gold_rate": 0.1,
            "gold_accuracy_threshold": 0.7,
            "assignment_minutes": 20,
            "consensus_mode": "each",
            "image_sources": "",
            "caption_sources": "",
        },
    )
    campaign = Campaign.objects.get(name="Fresh")
    assert response.status_code == 302
    assert campaign.tasks.count() == 2 and campaign.gold_accuracy_threshold == 0.7


def test_new_campaign_form_reports_a_duplicate_name(client, admin_user):
    campaign_with_tasks(name="Taken", images=1)
    client.force_login(admin_user)
    response = client.post(
        reverse("annotate:campaign_new"),
        {
            "name": "Taken",
            "captions_per_task": 4,
            "overlap": 3,
            "gold_rate": 0.05,
            "gold_accuracy_threshold": 0.6,
            "assignment_minutes": 30,
            "consensus_mode": "each",
        },
    )
    assert response.status_code == 400 and "already exists" in response.content.decode()


def test_export_download_for_admins(client, campaign, admin_user, annotator):
    assignment = services.task_next(campaign=campaign, user=annotator)
    ranking, ratings = answer_for(assignment.task)
    services.judgment_submit(
        user=annotator, task=assignment.task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
    )
    client.force_login(admin_user)
    response = client.get(reverse("annotate:campaign_export", args=[campaign.pk, "coco_hf"]))
    document = json.loads(b"".join(response.streaming_content))
    assert len(document["annotations"]) == 1
    assert client.get(reverse("annotate:campaign_export", args=[campaign.pk, "xml"])).status_code == 404


def test_a_large_build_continues_in_the_background(
    client, admin_user, eager_celery, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(views, "SYNC_BUILD_LIMIT", 2)
    campaign = campaign_with_tasks(name="Big", images=1)
    pool_create(images=4)
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("annotate:campaign_build", args=[campaign.pk]), {"limit": ""})
    assert response.status_code == 302
    assert campaign.tasks.count() == 5
