"""Hostile input gets a clear 4xx, never a 500: NUL characters in page addresses, numbers that
``str.isdigit()`` accepts but ``int()`` or the database does not, lax integers in API bodies, and an
oversized API body in debug mode. Each row of docs/security.md's table has its test here or beside the
code it concerns."""

from __future__ import annotations

import uuid

import pytest
from django.urls import reverse

from annotate import services as annotate_services
from annotate.models import Assignment, Judgment
from curate.models import Review
from tests.annotate.factories import campaign_with_tasks
from tests.api.conftest import api_client  # noqa: F401 - fixture
from tests.curate.conftest import ENCODER, VERSION, make_scored_pool

pytestmark = pytest.mark.django_db

SUPERSCRIPT_TWO = "²"  # str.isdigit() is True, int() raises
ARABIC_THREE = "٣"  # str.isdigit() is True, int() gives 3: a number nobody typed in ASCII
HUGE = "9" * 5000  # int() refuses more than 4,300 digits
BIG = "9" * 19  # fits int(), overflows a signed 64-bit column
NOT_NUMBERS = [SUPERSCRIPT_TWO, ARABIC_THREE, HUGE, BIG, "-1", " 3 4", "0x10"]


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.mark.parametrize(
    "url",
    [
        "/pool/?q=%00",
        "/pool/?source=a%00b",
        "/review/audit?curator=%00",
        "/filters/?encoder=x%00",
        "/admin/auth/user/?q=%00",
        "/admin/accounts/loginfailure/?q=a%00",
        "/pool/?%00=1",
    ],
)
def test_a_nul_character_in_a_page_address_is_a_400(admin_client, url):
    response = admin_client.get(url)
    assert response.status_code == 400
    assert b"NUL character" in response.content


def test_the_api_keeps_its_own_422_for_nul(api_client):  # noqa: F811 - the fixture imported above
    tc, _ = api_client("curator")
    assert tc.get("/api/captions?q=a%00b").status_code == 422


@pytest.fixture
def claimed(client, annotator):
    campaign = campaign_with_tasks(images=2, overlap=1)
    client.force_login(annotator)
    client.get(reverse("annotate:next", args=[campaign.pk]))
    task = Assignment.objects.get(user=annotator, status="active").task
    return client, campaign, task


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_a_rank_that_is_not_a_plain_number_is_asked_again(claimed, value):
    client, campaign, task = claimed
    ids = annotate_services.task_caption_ids(task)
    data = {"client_key": str(uuid.uuid4()), "duration_ms": "10"}
    for position, cid in enumerate(ids):
        data[f"tier_{cid}"] = value if position == 0 else str(position + 1)
        for key in campaign.criterion_keys:
            data[f"rate_{cid}_{key}"] = "3"
    response = client.post(reverse("annotate:submit", args=[campaign.pk, task.pk]), data)
    assert response.status_code == 400
    assert not Judgment.objects.exists()


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_a_rating_that_is_not_a_plain_number_is_asked_again(claimed, value):
    client, campaign, task = claimed
    ids = annotate_services.task_caption_ids(task)
    data = {"client_key": str(uuid.uuid4()), "duration_ms": value}
    for position, cid in enumerate(ids):
        data[f"tier_{cid}"] = str(position + 1)
        for key in campaign.criterion_keys:
            data[f"rate_{cid}_{key}"] = value if position == 0 else "3"
    response = client.post(reverse("annotate:submit", args=[campaign.pk, task.pk]), data)
    assert response.status_code == 400
    assert not Judgment.objects.exists()


@pytest.fixture
def curator_client(client, curator, settings):
    settings.LOUPE_DEFAULT_ENCODER = ENCODER
    captions = make_scored_pool(6)
    client.force_login(curator)
    return client, captions


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_review_decisions_with_a_version_that_is_not_a_plain_number_change_nothing(curator_client, value):
    client, captions = curator_client
    response = client.post(
        reverse("review:decide", args=[captions[0].id]),
        {"decision": "accept", "expected_version": value, "campaign": value},
    )
    assert response.status_code in (302, 400)
    response = client.post(
        reverse("review:bulk"),
        {"decision": "reject", "selected": [f"{value}:0", f"{captions[1].id}:{value}"]},
    )
    assert response.status_code == 302
    assert not Review.objects.exists()


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_pages_given_a_model_version_that_is_not_a_plain_number_fall_back_to_the_default(
    curator_client, value
):
    client, _ = curator_client
    for url in (reverse("filters:index"), reverse("filters:preview"), reverse("review:queue")):
        response = client.get(url, {"version": value, "encoder": ENCODER})
        assert response.status_code == 200, url
    assert client.get(reverse("filters:preview"), {"version": str(VERSION)}).status_code == 200


def test_export_start_with_a_campaign_that_is_not_a_number_is_refused_with_a_message(admin_client):
    from curate.filtering import FilterRule, filter_run_create, filter_run_execute

    make_scored_pool(4)
    run = filter_run_execute(
        run=filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=50))
    )
    for value in (SUPERSCRIPT_TWO, HUGE, BIG):
        response = admin_client.post(
            reverse("filters:export_start", args=[run.pk]), {"kind": "preferences", "campaign": value}
        )
        assert response.status_code == 302


@pytest.fixture
def judgment_body(api_client):  # noqa: F811 - the fixture imported above
    campaign = campaign_with_tasks(images=1, overlap=1)
    tc, user = api_client("annotator")
    task = tc.post(f"/api/campaigns/{campaign.pk}/next-task").json()
    ids = [c["id"] for c in task["captions"]]

    def body(rating=3, **overrides):
        data = {
            "task_id": task["task_id"],
            "ranking": [[cid] for cid in ids],
            "ratings": {str(cid): {key: rating for key in campaign.criterion_keys} for cid in ids},
            "client_key": str(uuid.uuid4()),
            "duration_ms": 1000,
        }
        data.update(overrides)
        return data

    return tc, body


@pytest.mark.parametrize("rating", [True, "3", "+3", "03", 3.0, " 3"], ids=repr)
def test_api_ratings_must_be_json_integers(judgment_body, rating):
    tc, body = judgment_body
    response = tc.post("/api/judgments", body(rating=rating), content_type="application/json")
    assert response.status_code == 422
    assert not Judgment.objects.exists()


@pytest.mark.parametrize(
    "override",
    [
        {"task_id": "1"},
        {"task_id": True},
        {"duration_ms": "10"},
        {"duration_ms": False},
        {"ranking": [["1"]]},
    ],
    ids=repr,
)
def test_api_ids_and_durations_must_be_json_integers(judgment_body, override):
    tc, body = judgment_body
    response = tc.post("/api/judgments", body(**override), content_type="application/json")
    assert response.status_code == 422


def test_api_plain_integers_are_still_accepted(judgment_body):
    tc, body = judgment_body
    assert tc.post("/api/judgments", body(), content_type="application/json").status_code == 201


def test_api_run_parameters_must_be_json_integers(api_client):  # noqa: F811 - the fixture imported above
    tc, _ = api_client("admin")
    for value in (True, "0", "+0"):
        response = tc.post(
            "/api/scoring-runs", {"reward_model_version": value}, content_type="application/json"
        )
        assert response.status_code == 422, value


def test_an_oversized_api_body_is_a_413_even_in_debug_mode(api_client, settings):  # noqa: F811 - the fixture imported above
    settings.DEBUG = True
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    tc, _ = api_client("annotator")
    response = tc.post("/api/judgments", {"task_id": 1, "pad": "x" * 5000}, content_type="application/json")
    assert response.status_code == 413
    assert "too large" in response.json()["detail"] and "Traceback" not in response.content.decode()


def test_an_oversized_body_without_a_length_is_a_413(api_client, settings):  # noqa: F811 - the fixture imported above
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    tc, _ = api_client("annotator")
    response = tc.generic(
        "POST", "/api/judgments", b"{" + b" " * 5000 + b"}", content_type="application/json"
    )
    assert response.status_code == 413
