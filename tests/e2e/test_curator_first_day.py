"""A curator in the browser: undo a decision by keyboard, and review a near-duplicate cluster as one item."""

from __future__ import annotations

import pytest
from django.urls import reverse

from curate.flags import _upsert, flags_refresh, near_duplicate_rows
from curate.models import FlagReason, Review
from pool.models import Caption
from tests.conftest import make_user
from tests.curate.conftest import ENCODER, VERSION, make_caption, make_image, make_scored_pool


@pytest.mark.django_db(transaction=True)
def test_a_decision_is_undone_with_u_and_the_undo_is_in_the_audit_trail(
    page, live_server, browser_login, artifacts_dir, settings
):
    settings.LOUPE_DEFAULT_ENCODER = ENCODER
    captions = make_scored_pool(20, images=10)
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION, low_reward_share=0.1)
    first = captions[0]
    make_user("carl", "curator")
    reverse("review:queue")
    browser_login("carl")
    page.goto(f"{live_server.url}/curate/review/?reason=low_reward")
    page.wait_for_selector(".review-item.current")
    page.keyboard.press("r")
    page.wait_for_selector(f"#item-{first.id}.decided")
    assert Caption.objects.get(pk=first.id).decision == "reject"
    page.screenshot(path=str(artifacts_dir / "review-decided-undo.png"), full_page=True)
    page.keyboard.press("u")
    page.wait_for_selector(f"#item-{first.id}:not(.decided) .item-notice-ok")
    assert Caption.objects.get(pk=first.id).decision == ""
    assert "undid reject by carl" in Review.objects.get(decision="undo").note
    # The restored pair has the focus again: decide it anew.
    page.keyboard.press("a")
    page.wait_for_selector(f"#item-{first.id}.decided")
    assert Caption.objects.get(pk=first.id).decision == "accept"
    page.goto(f"{live_server.url}/curate/review/audit")
    assert page.locator(".audit-table .pill.decision-undo").count() == 1
    page.screenshot(path=str(artifacts_dir / "review-audit-undo.png"), full_page=True)


@pytest.mark.django_db(transaction=True)
def test_a_near_duplicate_cluster_is_one_item_with_the_kept_image_beside_its_duplicates(
    page, live_server, browser_login, artifacts_dir
):
    kept = make_image(10)
    make_caption(kept, "Sunflower in a clay pot")
    duplicates = []
    for i in range(2):
        dup = make_image(
            11 + i, status="near_duplicate", duplicate_of=kept, reason="perceptual hash distance 3"
        )
        make_caption(dup, f"sunflower pot {i}")
        make_caption(dup, f"clip art of flower, pot, plant ({i})")
        duplicates.append(dup)
    _upsert(FlagReason.NEAR_DUPLICATE, near_duplicate_rows())
    make_user("carl", "curator")
    reverse("review:queue")
    browser_login("carl")
    page.goto(f"{live_server.url}/curate/review/?reason=near_duplicate")
    page.wait_for_selector(".review-item.current")
    assert page.locator(".review-item").count() == 1
    assert page.locator(".cluster-figure").count() == 3
    assert page.locator(".cluster-figure.is-kept").count() == 1
    page.screenshot(path=str(artifacts_dir / "review-near-duplicate-cluster.png"), full_page=True)
    page.keyboard.press("r")
    page.wait_for_selector(f"#item-cluster-{kept.pk}.decided")
    assert set(Caption.objects.filter(image__in=duplicates).values_list("decision", flat=True)) == {"reject"}
    page.keyboard.press("u")
    page.wait_for_selector(f"#item-cluster-{kept.pk}:not(.decided)")
    assert set(Caption.objects.filter(image__in=duplicates).values_list("decision", flat=True)) == {""}
