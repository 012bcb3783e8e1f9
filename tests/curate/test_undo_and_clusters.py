"""A decision can be undone (the undo is an audit entry), and near duplicates are reviewed one cluster at
a time: the kept image beside its duplicates."""

from __future__ import annotations

import pytest
from django.urls import reverse

from curate.flags import _upsert, near_duplicate_rows
from curate.models import FlagReason, Review
from curate.selectors import (
    QueueFilters,
    ScoreContext,
    near_duplicate_clusters,
    review_counts_by_reason,
    review_queue,
)
from curate.services import (
    DecisionConflict,
    NothingToUndo,
    cluster_decide,
    cluster_undo,
    review_decide,
    review_undo,
)
from pool.models import Caption
from tests.curate.conftest import ENCODER, VERSION, make_caption, make_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def caption():
    return make_caption(make_image(1), "a cat on a mat")


def test_undo_restores_the_decision_before_and_is_an_audit_entry(caption, curator):
    review_decide(caption=caption, reviewer=curator, decision="accept", expected_version=0)
    rejected = review_decide(caption=caption, reviewer=curator, decision="reject", expected_version=1)
    undo = review_undo(caption=caption, reviewer=curator, expected_version=2)
    caption.refresh_from_db()
    assert caption.decision == "accept" and caption.decision_version == 3
    assert undo.decision == "undo" and undo.undoes == rejected and "undid reject" in undo.note
    # Undo again: the accept is taken back too; then there is nothing left.
    review_undo(caption=caption, reviewer=curator, expected_version=3)
    caption.refresh_from_db()
    assert caption.decision == ""
    with pytest.raises(NothingToUndo):
        review_undo(caption=caption, reviewer=curator, expected_version=4)
    assert list(Review.objects.filter(caption=caption).values_list("decision", flat=True).order_by("id")) == [
        "accept",
        "reject",
        "undo",
        "undo",
    ]


def test_an_undo_from_a_stale_page_is_a_conflict(caption, curator):
    review_decide(caption=caption, reviewer=curator, decision="accept", expected_version=0)
    with pytest.raises(DecisionConflict):
        review_undo(caption=caption, reviewer=curator, expected_version=0)


def test_undoing_a_rewrite_rejects_the_new_caption(caption, curator):
    review = review_decide(
        caption=caption, reviewer=curator, decision="rewrite", expected_version=0, rewrite_text="a grey cat"
    )
    review_undo(caption=caption, reviewer=curator, expected_version=1)
    rewritten = Caption.objects.get(pk=review.rewritten_caption_id)
    assert rewritten.decision == "reject"
    assert Review.objects.get(caption=rewritten).note.startswith("the rewrite of pair")


def test_undo_in_the_queue_swaps_the_pair_back_undecided(client, caption, curator):
    from curate.models import Flag

    Flag.objects.create(caption=caption, reason=FlagReason.LOW_REWARD)
    client.force_login(curator)
    decided = client.post(
        reverse("review:decide", args=[caption.pk]),
        {"decision": "reject", "expected_version": "0"},
        headers={"HX-Request": "true"},
    ).content.decode()
    assert reverse("review:undo", args=[caption.pk]) in decided
    response = client.post(
        reverse("review:undo", args=[caption.pk]), {"expected_version": "1"}, headers={"HX-Request": "true"}
    )
    html = response.content.decode()
    assert response.status_code == 200 and "Undone: reject by carl" in html and 'value="accept"' in html
    audit = client.get(reverse("review:audit")).content.decode()
    assert "undid reject by carl" in audit


# --- near-duplicate clusters -----------------------------------------------------------------------


@pytest.fixture
def cluster():
    kept = make_image(10)
    dups = [
        make_image(11 + i, status="near_duplicate", duplicate_of=kept, reason="phash distance 2")
        for i in range(2)
    ]
    make_caption(kept, "the kept image's title")
    for dup in dups:
        make_caption(dup, f"title of duplicate {dup.pk}")
        make_caption(dup, f"keywords of duplicate {dup.pk}")
    _upsert(FlagReason.NEAR_DUPLICATE, near_duplicate_rows())
    return kept, dups


def test_near_duplicates_are_one_item_per_cluster(cluster, client, curator):
    kept, dups = cluster
    assert list(near_duplicate_clusters()) == [kept]
    assert review_counts_by_reason()["near_duplicate"] == 1
    # The caption queue of every reason does not list them one by one.
    context = ScoreContext(encoder=ENCODER, reward_model_version=VERSION)
    assert not review_queue(filters=QueueFilters(), context=context).exists()
    client.force_login(curator)
    html = client.get(reverse("review:queue"), {"reason": "near_duplicate"}).content.decode()
    assert html.count('class="review-item cluster-item"') == 1
    assert html.count("cluster-figure is-kept") == 1 and html.count('class="cluster-figure"') == 2
    assert "drop their 4 captions" in html


def test_confirming_a_cluster_drops_the_duplicates_captions_and_can_be_undone(cluster, client, curator):
    kept, dups = cluster
    client.force_login(curator)
    response = client.post(reverse("review:cluster_decide", args=[kept.pk]), headers={"HX-Request": "true"})
    assert "Dropped 4 captions" in response.content.decode()
    assert set(Caption.objects.filter(image__in=dups).values_list("decision", flat=True)) == {"reject"}
    assert Caption.objects.get(image=kept).decision == ""
    assert not near_duplicate_clusters(state="undecided").exists()
    response = client.post(reverse("review:cluster_undo", args=[kept.pk]), headers={"HX-Request": "true"})
    assert "4 captions of this cluster are undecided again" in response.content.decode()
    assert set(Caption.objects.filter(image__in=dups).values_list("decision", flat=True)) == {""}
    assert Review.objects.filter(decision="undo").count() == 4


def test_cluster_services_leave_other_curators_decisions_alone(cluster, curator):
    kept, dups = cluster
    mine = Caption.objects.filter(image=dups[0]).first()
    review_decide(caption=mine, reviewer=curator, decision="accept", expected_version=0)
    made = cluster_decide(kept_image=kept, reviewer=curator)
    assert len(made) == 3
    mine.refresh_from_db()
    assert mine.decision == "accept"
    assert len(cluster_undo(kept_image=kept, reviewer=curator)) == 3
    mine.refresh_from_db()
    assert mine.decision == "accept"
