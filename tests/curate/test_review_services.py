from __future__ import annotations

import pytest

from curate.models import Review
from curate.services import DecisionConflict, review_decide, review_decide_bulk
from tests.conftest import make_user
from tests.curate.conftest import make_caption, make_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def caption():
    return make_caption(make_image(1), "a cat on a mat")


def test_a_decision_is_recorded_and_mirrored_on_the_caption(caption, curator):
    review = review_decide(
        caption=caption, reviewer=curator, decision="accept", expected_version=0, note="fine"
    )
    caption.refresh_from_db()
    assert (caption.decision, caption.decision_version) == ("accept", 1)
    assert (review.reviewer, review.decision, review.note) == (curator, "accept", "fine")


def test_a_stale_decision_shows_the_newer_one_instead_of_overwriting(caption, curator):
    other = make_user("olga", "curator")
    review_decide(caption=caption, reviewer=other, decision="reject", expected_version=0)
    with pytest.raises(DecisionConflict) as info:
        review_decide(caption=caption, reviewer=curator, decision="accept", expected_version=0)
    assert info.value.caption.decision == "reject"
    assert info.value.latest.reviewer == other
    assert "olga" in str(info.value)
    caption.refresh_from_db()
    assert caption.decision == "reject" and Review.objects.count() == 1


def test_a_curator_can_change_a_decision_with_the_current_version(caption, curator):
    review_decide(caption=caption, reviewer=curator, decision="reject", expected_version=0)
    review_decide(caption=caption, reviewer=curator, decision="accept", expected_version=1)
    caption.refresh_from_db()
    assert (caption.decision, caption.decision_version) == ("accept", 2)
    assert list(Review.objects.order_by("id").values_list("decision", flat=True)) == ["reject", "accept"]


def test_bulk_decisions_apply_each_under_its_own_version(curator):
    image = make_image(2)
    a, b, c = (make_caption(image, text) for text in ("a", "b", "c"))
    review_decide(caption=b, reviewer=curator, decision="accept", expected_version=0)
    result = review_decide_bulk(
        selection=[(a.id, 0), (b.id, 0), (c.id, 0)], reviewer=curator, decision="reject"
    )
    assert result.decided == [a.id, c.id] and result.conflicts == [b.id]


def test_bulk_rewrite_is_refused(curator, caption):
    with pytest.raises(ValueError, match="one caption at a time"):
        review_decide_bulk(selection=[(caption.id, 0)], reviewer=curator, decision="rewrite")
