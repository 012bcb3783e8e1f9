from __future__ import annotations

import pytest
from django.urls import reverse

from curate.flags import flags_refresh
from curate.models import Flag, Review
from curate.services import review_decide
from pool.models import Caption
from tests.conftest import make_user
from tests.curate.conftest import ENCODER, VERSION, make_scored_pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def flagged(settings):
    settings.LOUPE_DEFAULT_ENCODER = ENCODER
    captions = make_scored_pool(20, images=10)
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION, low_reward_share=0.15)
    return captions[:3]


@pytest.fixture
def client_curator(client, curator):
    client.force_login(curator)
    return client


def test_the_queue_needs_the_curator_role(client, annotator):
    client.force_login(annotator)
    assert client.get(reverse("review:queue")).status_code == 403


def test_the_queue_shows_each_flagged_image_with_all_its_captions_and_scores(client_curator, flagged):
    page = client_curator.get(reverse("review:queue")).content.decode()
    for caption in flagged:
        assert f'id="item-{caption.id}"' in page
    sibling = Caption.objects.filter(image=flagged[0].image).exclude(pk=flagged[0].pk).first()
    assert sibling.text in page  # the image's other caption is shown too
    assert "low reward" in page and "Keyboard" in page and "<kbd>j</kbd>" in page


def test_the_queue_filters_by_reason_source_and_score_range(client_curator, flagged):
    assert b"item-" not in client_curator.get(reverse("review:queue"), {"reason": "truncated"}).content
    page = client_curator.get(reverse("review:queue"), {"score_min": 1.5, "score_max": 10}).content.decode()
    assert f'id="item-{flagged[2].id}"' in page and f'id="item-{flagged[0].id}"' not in page
    assert b"item-" not in client_curator.get(reverse("review:queue"), {"source": "rewrite"}).content


def test_a_plain_form_decision_redirects_and_records_who_and_when(client_curator, flagged, curator):
    caption = flagged[0]
    response = client_curator.post(
        reverse("review:decide", args=[caption.id]),
        {"decision": "reject", "expected_version": 0, "note": "bad"},
    )
    assert response.status_code == 302
    review = Review.objects.get()
    assert (review.reviewer, review.decision, review.note, review.caption) == (
        curator,
        "reject",
        "bad",
        caption,
    )
    page = client_curator.get(reverse("review:queue")).content.decode()
    assert f'id="item-{caption.id}"' not in page  # decided pairs leave the default queue
    assert Flag.objects.get(caption=caption).is_open  # the flag stays as the reason it was reviewed


def test_an_htmx_decision_swaps_the_item_for_its_decided_state(client_curator, flagged):
    response = client_curator.post(
        reverse("review:decide", args=[flagged[1].id]),
        {"decision": "accept", "expected_version": 0},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200 and response["HX-Trigger"] == "review-decided"
    body = response.content.decode()
    assert "decided" in body and "Accepted" in body and "<html" not in body


def test_a_concurrent_decision_returns_409_with_the_newer_decision(client_curator, flagged):
    caption = flagged[0]
    olga = make_user("olga", "curator")
    review_decide(caption=caption, reviewer=olga, decision="reject", expected_version=0, note="blurry")
    response = client_curator.post(
        reverse("review:decide", args=[caption.id]),
        {"decision": "accept", "expected_version": 0},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 409
    body = response.content.decode()
    assert "olga" in body and "reject" in body and "blurry" in body
    assert 'name="expected_version" value="1"' in body  # the curator can now decide knowingly
    caption.refresh_from_db()
    assert caption.decision == "reject"
    plain = client_curator.post(
        reverse("review:decide", args=[caption.id]), {"decision": "accept", "expected_version": 0}
    )
    assert plain.status_code == 409 and "olga" in plain.content.decode()


def test_an_empty_rewrite_is_refused_with_a_message(client_curator, flagged):
    response = client_curator.post(
        reverse("review:decide", args=[flagged[0].id]),
        {"decision": "rewrite", "expected_version": 0, "rewrite_text": "  "},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 400 and "empty" in response.content.decode()
    assert not Review.objects.exists()


def test_a_rewrite_through_the_form_creates_the_new_caption(client_curator, flagged):
    response = client_curator.post(
        reverse("review:decide", args=[flagged[0].id]),
        {"decision": "rewrite", "expected_version": 0, "rewrite_text": "a sharper caption"},
    )
    assert response.status_code == 302
    rewrite = Caption.objects.get(source="rewrite")
    assert rewrite.parent == flagged[0] and rewrite.text == "a sharper caption"


def test_accepting_a_suggestion_saves_it_as_the_rewrite(client_curator, flagged, eager_celery, settings):
    settings.LOUPE_DEFAULT_ENCODER = "test:no-such-encoder"
    caption = flagged[0]
    response = client_curator.post(
        reverse("review:suggest", args=[caption.id]), headers={"HX-Request": "true"}
    )
    assert "Use this rewrite" in response.content.decode()
    page = client_curator.get(reverse("review:queue")).content.decode()
    assert "Use this rewrite" in page
    from curate.rewrite import rewrite_suggestion_get

    text = rewrite_suggestion_get(caption_id=caption.id)["text"]
    client_curator.post(
        reverse("review:decide", args=[caption.id]), {"accept_suggestion": text, "expected_version": 0}
    )
    assert Caption.objects.get(source="rewrite", parent=caption).text == text


def test_bulk_actions_decide_the_selection_and_report_conflicts(client_curator, flagged):
    a, b, c = flagged
    review_decide(caption=b, reviewer=make_user("olga", "curator"), decision="reject", expected_version=0)
    response = client_curator.post(
        reverse("review:bulk"),
        {"decision": "accept", "selected": [f"{a.id}:0", f"{b.id}:0", f"{c.id}:0"]},
        follow=True,
    )
    assert list(
        Caption.objects.filter(pk__in=[a.id, b.id, c.id]).order_by("id").values_list("decision", flat=True)
    ) == [
        "accept",
        "reject",
        "accept",
    ]
    body = response.content.decode()
    assert "Accepted 2 pair(s)" in body and "decided by someone else" in body


def test_the_audit_trail_lists_decisions_and_filters_by_curator_and_decision(
    client_curator, flagged, curator
):
    olga = make_user("olga", "curator")
    review_decide(caption=flagged[0], reviewer=olga, decision="reject", expected_version=0, note="n1")
    review_decide(caption=flagged[1], reviewer=curator, decision="accept", expected_version=0, note="n2")
    page = client_curator.get(reverse("review:audit")).content.decode()
    assert "n1" in page and "n2" in page
    page = client_curator.get(reverse("review:audit"), {"curator": "olga"}).content.decode()
    assert "n1" in page and "n2" not in page
    page = client_curator.get(reverse("review:audit"), {"decision": "accept"}).content.decode()
    assert "n2" in page and "n1" not in page


def test_old_review_and_filter_addresses_redirect_to_curate(client):
    response = client.get("/annotate/review/audit?decision=accept")
    assert response.status_code == 302 and response["Location"] == "/curate/review/audit?decision=accept"
    assert client.get("/scoring/filters/")["Location"] == "/curate/filters/"
