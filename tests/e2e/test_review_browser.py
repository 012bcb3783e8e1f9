"""A curator works through flagged pairs with the keyboard only, and rewrites one caption."""

from __future__ import annotations

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from curate.flags import flags_refresh
from curate.models import Review
from pool.models import Caption
from tests.conftest import make_user
from tests.curate.conftest import ENCODER, VERSION, make_caption, make_scored_pool


@pytest.mark.django_db(transaction=True)
def test_curator_reviews_three_flagged_pairs_by_keyboard(
    page, live_server, browser_login, artifacts_dir, settings
):
    settings.LOUPE_DEFAULT_ENCODER = ENCODER
    captions = make_scored_pool(20, images=10)
    for caption in captions[:3]:
        make_caption(caption.image, f"an alternative description of image {caption.image_id}")
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION, low_reward_share=0.15)
    first, second, third = captions[:3]
    make_user("carl", "curator")
    # Load the URLconf (and the heavy modules it imports) in this process before the browser's first
    # request, which would otherwise spend the page timeout importing.
    reverse("review:queue")
    browser_login("carl")

    page.goto(f"{live_server.url}/curate/review/?reason=low_reward")
    items = page.locator(".review-item:not(.decided)")
    assert items.count() == 3
    assert page.locator(".review-legend").is_visible()
    page.wait_for_selector(".review-item.current")
    page.screenshot(path=str(artifacts_dir / "review-queue.png"), full_page=True)

    page.keyboard.press("a")  # accept the first pair
    page.wait_for_selector(f"#item-{first.id}.decided")
    page.keyboard.press("r")  # focus moved on: reject the second
    page.wait_for_selector(f"#item-{second.id}.decided")
    page.keyboard.press("e")  # rewrite the third
    textarea = page.locator(f"#item-{third.id} .rewrite-text")
    assert textarea.evaluate("el => el === document.activeElement")
    page.keyboard.type("a pale photo of pair two, centred on a grey background")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(f"#item-{third.id}.decided")
    page.screenshot(path=str(artifacts_dir / "review-queue-decided.png"), full_page=True)

    decisions = dict(
        Caption.objects.filter(pk__in=[first.id, second.id, third.id]).values_list("id", "decision")
    )
    assert decisions == {first.id: "accept", second.id: "reject", third.id: "rewrite"}
    rewrite = Caption.objects.get(parent=third)
    assert rewrite.source == "rewrite" and rewrite.text.startswith("a pale photo of pair two")
    assert Caption.objects.get(pk=third.id).text == third.text
    assert Review.objects.filter(reviewer__username="carl").count() == 3


@pytest.mark.django_db(transaction=True)
def test_filter_preview_follows_the_form_and_a_run_is_listed(
    page, live_server, browser_login, artifacts_dir, settings, eager_celery
):
    settings.LOUPE_DEFAULT_ENCODER = ENCODER
    make_scored_pool(40, images=20)
    make_user("ada", "admin")
    reverse("filters:index")
    browser_login("ada")
    page.goto(f"{live_server.url}/curate/filters/")
    assert page.locator("#preview-kept").inner_text() == "12"
    page.fill("input[name=top_percent]", "50")
    expect(page.locator("#preview-kept")).to_have_text("20")
    assert page.locator("#preview svg line.cut").count() == 1
    page.click("text=Run filter")
    page.wait_for_selector(".runs-table td.num >> text=20")
    page.screenshot(path=str(artifacts_dir / "filters.png"), full_page=True)
