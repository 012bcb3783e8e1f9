"""An annotator ranks (with a tie) and rates a task with the keyboard only, and the next task swaps in."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from accounts.roles import ROLES
from annotate.models import Judgment
from tests.annotate.factories import campaign_with_tasks
from tests.conftest import make_user


@pytest.fixture(autouse=True)
def _roles(transactional_db, page):
    # Transactional tests flush the tables between tests, including the groups a data migration made.
    for role in ROLES:
        Group.objects.get_or_create(name=role)
    # The shared CI machine can be slow; a wait that times out should mean a bug, not a busy CPU.
    page.set_default_timeout(45_000)


@pytest.mark.django_db(transaction=True)
def test_keyboard_only_ranking_with_a_tie_and_ratings(page, live_server, browser_login, artifacts_dir):
    campaign = campaign_with_tasks(
        name="Photos, round 1",
        images=2,
        captions_per_image=4,
        overlap=1,
        instructions="Rank the captions from **best** to worst. Ties are fine when two are equally good.",
    )
    make_user("anna", "annotator")
    browser_login("anna")
    page.goto(f"{live_server.url}/annotate/{campaign.pk}/next")
    page.wait_for_selector("html.annotate-js #task-form")
    first_task = page.get_attribute(".task-layout", "data-task-id")
    letters = {
        el.get_attribute("data-letter"): int(el.get_attribute("data-caption-id"))
        for el in page.query_selector_all(".caption-card")
    }
    assert sorted(letters) == ["A", "B", "C", "D"]

    # Start: A > B > C > D, focus on A. Move B to the top, then tie C with A: B > A = C > D.
    page.keyboard.press("j")
    page.keyboard.press("[")
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("=")
    page.keyboard.press("k")
    page.keyboard.press("k")
    # Rate every criterion of every caption; digits advance criterion by criterion, caption by caption.
    for digit in "5555444433332222":
        page.keyboard.press(digit)
    badges = [el.inner_text() for el in page.query_selector_all(".caption-card .rank-badge")]
    assert badges == ["1", "=2", "=2", "4"]
    # Focus on a caption in the middle for a representative screenshot of the task screen.
    page.keyboard.press("k")
    page.keyboard.press("k")
    page.screenshot(path=str(artifacts_dir / "annotate-task.png"), full_page=False)

    page.evaluate("window.__noReload = 'still here'")
    navigations_before = page.evaluate("performance.getEntriesByType('navigation').length")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "id => { const el = document.querySelector('.task-layout'); return el && el.dataset.taskId !== id; }",
        arg=first_task,
    )
    # The next task arrived without a page load: the window state survived.
    assert page.evaluate("window.__noReload") == "still here"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == navigations_before
    page.wait_for_selector('[data-progress="done_total"]:text("1")')

    judgment = Judgment.objects.get()
    assert judgment.task_id == int(first_task)
    assert judgment.ranking == [[letters["B"]], sorted([letters["A"], letters["C"]]), [letters["D"]]]
    expected = {"B": 5, "A": 4, "C": 3, "D": 2}
    for letter, value in expected.items():
        assert set(judgment.ratings[str(letters[letter])].values()) == {value}
    assert judgment.duration_ms > 0


@pytest.mark.django_db(transaction=True)
def test_undo_and_refused_submit_message_in_the_browser(page, live_server, browser_login):
    campaign = campaign_with_tasks(name="Undo", images=1, captions_per_image=3, overlap=1)
    make_user("anna", "annotator")
    browser_login("anna")
    page.goto(f"{live_server.url}/annotate/{campaign.pk}/next")
    page.wait_for_selector("html.annotate-js #task-form")
    page.keyboard.press("j")
    page.keyboard.press("=")
    assert [el.inner_text() for el in page.query_selector_all(".rank-badge")] == ["=1", "=1", "3"]
    page.keyboard.press("u")
    # Back to nothing ranked: the display order is never a ranking by default.
    assert [el.inner_text() for el in page.query_selector_all(".rank-badge")] == ["–", "–", "–"]
    # Enter with ratings missing does not post; it says what is missing and where.
    page.keyboard.press("Enter")
    assert "Rate Accuracy for caption" in page.inner_text("#task-status")
    assert Judgment.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_campaign_page_for_admins(page, live_server, browser_login, artifacts_dir):
    import uuid

    from annotate import services
    from annotate.models import Task

    campaign = campaign_with_tasks(name="Photos, round 2", images=4, captions_per_image=4, overlap=3)
    gold = Task.objects.order_by("id").first()
    services.task_gold_set(task=gold, ranking=[[c] for c in services.task_caption_ids(gold)])
    users = [make_user(f"rater{i}", "annotator") for i in range(3)]
    for index, user in enumerate(users):
        while (assignment := services.task_next(campaign=campaign, user=user)) is not None:
            ids = services.task_caption_ids(assignment.task)
            ranking = [[c] for c in (reversed(ids) if index == 2 else ids)]
            ratings = {str(c): {k: 3 + (index == 1) for k in campaign.criterion_keys} for c in ids}
            services.judgment_submit(
                user=user, task=assignment.task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
            )
    make_user("ada", "admin")
    browser_login("ada")
    page.goto(f"{live_server.url}/annotate/{campaign.pk}/")
    assert page.locator("svg.chart").count() == 2
    assert page.locator("tr.flag-row").count() == 0  # one gold judgment each: too few to flag anyone
    page.screenshot(path=str(artifacts_dir / "annotate-campaign.png"), full_page=True)


@pytest.mark.django_db(transaction=True)
def test_the_task_works_as_a_plain_form_without_javascript(browser, live_server, artifacts_dir):
    campaign = campaign_with_tasks(name="No script", images=2, captions_per_image=3, overlap=1)
    make_user("anna", "annotator")
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(45_000)
    try:
        page.goto(f"{live_server.url}/login/")
        page.fill("input[name=username]", "anna")
        page.fill("input[name=password]", "pw-for-tests")
        page.click("button[type=submit]")
        page.goto(f"{live_server.url}/annotate/{campaign.pk}/next")
        first_task = page.get_attribute(".task-layout", "data-task-id")
        ids = [int(el.get_attribute("data-caption-id")) for el in page.query_selector_all(".caption-card")]
        # Ranks 1, 1, 3: the first two tied. Every rating 4, by clicking the labels.
        for caption_id, rank in zip(ids, ["1", "1", "3"], strict=True):
            page.select_option(f"select[name=tier_{caption_id}]", rank)
            for key in campaign.criterion_keys:
                page.click(f"label:has(input[name=rate_{caption_id}_{key}][value='4'])")
        page.screenshot(path=str(artifacts_dir / "annotate-task-nojs.png"))
        page.click("button.submit-button")
        page.wait_for_selector("text=Saved. Here is your next task.")
        assert page.get_attribute(".task-layout", "data-task-id") != first_task
    finally:
        context.close()
    judgment = Judgment.objects.get()
    assert judgment.ranking == [sorted(ids[:2]), [ids[2]]]
    assert {v for row in judgment.ratings.values() for v in row.values()} == {4}
