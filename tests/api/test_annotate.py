"""Annotation through the API: next task, idempotent submit, service errors as 4xx, own judgments only."""

from __future__ import annotations

import uuid

import pytest

from annotate.models import Judgment
from tests.annotate.factories import answer_for, campaign_with_tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign(db):
    return campaign_with_tasks(name="api", images=3, captions_per_image=3, overlap=2)


def _next(tc, campaign):
    response = tc.post(f"/api/campaigns/{campaign.pk}/next-task")
    assert response.status_code == 200, response.content
    return response.json()


def _submit(tc, task_id, ranking, ratings, key=None):
    body = {
        "task_id": task_id,
        "ranking": ranking,
        "ratings": ratings,
        "client_key": str(key or uuid.uuid4()),
    }
    return tc.post("/api/judgments", body, content_type="application/json")


def _answer(task_json):
    from annotate.models import Task

    return answer_for(Task.objects.get(pk=task_json["task_id"]))


def test_annotator_lists_campaigns_and_gets_a_task(api_client, campaign):
    tc, _ = api_client("annotator")
    assert [c["name"] for c in tc.get("/api/campaigns").json()["items"]] == ["api"]
    task = _next(tc, campaign)
    assert len(task["captions"]) == 3 and task["image"]["url"].startswith("/media/")
    assert [c["key"] for c in task["criteria"]] == campaign.criterion_keys
    # Asking again returns the task already held, not a second one.
    assert _next(tc, campaign)["task_id"] == task["task_id"]


def test_submit_is_idempotent_by_client_key(api_client, campaign):
    tc, user = api_client("annotator")
    task = _next(tc, campaign)
    ranking, ratings = _answer(task)
    key = uuid.uuid4()
    first = _submit(tc, task["task_id"], ranking, ratings, key)
    assert first.status_code == 201, first.content
    again = _submit(tc, task["task_id"], ranking, ratings, key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert Judgment.objects.filter(client_key=key).count() == 1


def test_invalid_ranking_is_400_with_the_services_message(api_client, campaign):
    tc, _ = api_client("annotator")
    task = _next(tc, campaign)
    ranking, ratings = _answer(task)
    response = _submit(tc, task["task_id"], ranking[:-1], ratings)
    assert response.status_code == 400
    assert "leaves out" in response.json()["detail"]


def test_submit_for_a_task_not_held_is_refused(api_client, campaign):
    holder, _ = api_client("annotator")
    other, _ = api_client("annotator")
    task = _next(holder, campaign)
    ranking, ratings = _answer(task)
    response = _submit(other, task["task_id"], ranking, ratings)
    assert response.status_code == 403
    assert "assigned to another annotator" in response.json()["detail"]


def test_someone_elses_client_key_is_409_and_reveals_nothing(api_client, campaign):
    a, _ = api_client("annotator")
    b, _ = api_client("annotator")
    task_a = _next(a, campaign)
    key = uuid.uuid4()
    ranking, ratings = _answer(task_a)
    assert _submit(a, task_a["task_id"], ranking, ratings, key).status_code == 201
    task_b = _next(b, campaign)
    ranking_b, ratings_b = _answer(task_b)
    response = _submit(b, task_b["task_id"], ranking_b, ratings_b, key)
    assert response.status_code == 409
    assert "ratings" not in response.json()


def test_annotators_read_only_their_own_judgments(api_client, campaign):
    a, _ = api_client("annotator")
    b, _ = api_client("annotator")
    task = _next(a, campaign)
    created = _submit(a, task["task_id"], *_answer(task)).json()
    assert [j["id"] for j in a.get("/api/judgments").json()["items"]] == [created["id"]]
    assert a.get(f"/api/judgments/{created['id']}").status_code == 200
    assert b.get("/api/judgments").json()["items"] == []
    assert b.get(f"/api/judgments/{created['id']}").status_code == 404
    assert b.get(f"/api/judgments?task_id={task['task_id']}").json()["items"] == []


def test_empty_queue_is_204(api_client):
    campaign = campaign_with_tasks(name="tiny", images=1, captions_per_image=3, overlap=1)
    a, _ = api_client("annotator")
    b, _ = api_client("annotator")
    task = _next(a, campaign)
    assert _submit(a, task["task_id"], *_answer(task)).status_code == 201
    assert a.post(f"/api/campaigns/{campaign.pk}/next-task").status_code == 204
    assert b.post(f"/api/campaigns/{campaign.pk}/next-task").status_code == 204


def test_unknown_task_is_404(api_client, campaign):
    tc, _ = api_client("annotator")
    assert _submit(tc, 99999999, [[1]], {}).status_code == 404
