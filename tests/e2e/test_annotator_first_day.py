"""An annotator's first day in the browser: the ranking follows their ratings (or their own order), skip
then rate by keyboard, Back/Forward to a submitted task, a reload keeps the ratings, correcting the last
judgment, zooming the image, and the way on after a refused submit."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group

from accounts.roles import ROLES
from annotate import services
from annotate.models import Judgment, JudgmentRevision
from tests.annotate.factories import answer_for, campaign_with_tasks
from tests.conftest import make_user


@pytest.fixture(autouse=True)
def _roles(transactional_db, page):
    for role in ROLES:
        Group.objects.get_or_create(name=role)
    page.set_default_timeout(45_000)


def _open(page, live_server, browser_login, *, images=3, overlap=1, name="Day one"):
    campaign = campaign_with_tasks(name=name, images=images, captions_per_image=4, overlap=overlap)
    make_user("anna", "annotator")
    browser_login("anna")
    page.goto(f"{live_server.url}/annotate/{campaign.pk}/next")
    page.wait_for_selector("html.annotate-js #task-form")
    return campaign


def _letters(page) -> dict[str, int]:
    return {
        el.get_attribute("data-letter"): int(el.get_attribute("data-caption-id"))
        for el in page.query_selector_all(".caption-card")
    }


def _task_id(page) -> str:
    return page.get_attribute(".task-layout", "data-task-id")


def _wait_for_another_task(page, task_id: str) -> None:
    page.wait_for_function(
        "id => { const el = document.querySelector('.task-layout'); return el && el.dataset.taskId !== id; }",
        arg=task_id,
    )


class Keys:
    """Presses keys and counts them: the keystrokes per task are a number the docs quote."""

    def __init__(self, page):
        self.page, self.count = page, 0

    def press(self, *keys: str) -> None:
        for key in keys:
            self.page.keyboard.press(key)
            self.count += 1


@pytest.mark.django_db(transaction=True)
def test_the_ranking_follows_the_ratings_live_and_a_task_takes_17_keys(
    page, live_server, browser_login, artifacts_dir
):
    _open(page, live_server, browser_login)
    letters = _letters(page)
    first = _task_id(page)
    # Enter before any rating submits nothing and says what is missing where the eye is.
    page.keyboard.press("Enter")
    assert page.locator(".rating-row.is-missing .missing-note").is_visible()
    assert "Not ranked yet" in page.inner_text("#ranking-summary")
    keys = Keys(page)
    # Captions in display order A, B, C, D rated 3, 5, 3, 2 on every criterion: B > A = C > D.
    keys.press(*"3333", *"55")
    # Live: the fully rated caption already shows its rank so far; nothing is ranked yet.
    assert page.locator('.caption-card[data-letter="A"] .rank-badge').inner_text() == "1"
    assert "Not ranked yet" in page.inner_text("#ranking-summary")
    keys.press(*"55", *"3333", *"2222")
    assert page.inner_text("#ranking-summary").startswith("Ranked by your ratings: B > A = C > D")
    badges = [el.inner_text() for el in page.query_selector_all(".caption-card .rank-badge")]
    assert badges == ["1", "=2", "=2", "4"]
    page.screenshot(path=str(artifacts_dir / "annotate-ranked-by-ratings.png"))
    keys.press("Enter")
    _wait_for_another_task(page, first)
    assert keys.count == 17  # 16 ratings + submit
    judgment = Judgment.objects.get()
    assert judgment.ranking_basis == "ratings"
    assert judgment.ranking == [[letters["B"]], sorted([letters["A"], letters["C"]]), [letters["D"]]]

    # The second task: equal ratings tie everything; the annotator then makes the order their own.
    second = _task_id(page)
    letters = _letters(page)
    page.keyboard.type("4" * 16)
    assert [el.inner_text() for el in page.query_selector_all(".rank-badge")] == ["=1"] * 4
    page.keyboard.press("j")
    page.keyboard.press("=")  # untie B from A: A > B = C = D
    assert page.inner_text("#ranking-summary").startswith("Your order: A > B = C = D")
    page.keyboard.press("Enter")
    _wait_for_another_task(page, second)
    judgment = Judgment.objects.get(task_id=int(second))
    assert judgment.ranking_basis == "adjusted"
    assert judgment.ranking == [[letters["A"]], sorted([letters["B"], letters["C"], letters["D"]])]


@pytest.mark.django_db(transaction=True)
def test_skip_with_a_reason_then_rate_the_next_task_by_keyboard(page, live_server, browser_login):
    _open(page, live_server, browser_login)
    skipped = _task_id(page)
    page.keyboard.press("s")
    page.keyboard.press("ArrowDown")  # the first reason
    page.keyboard.press("Enter")
    _wait_for_another_task(page, skipped)
    # Focus is on the new task, not trapped in the reason list of the old one.
    assert page.evaluate("document.activeElement.id") == "ranking"
    current = _task_id(page)
    page.keyboard.type("5" * 16)
    page.keyboard.press("Enter")
    _wait_for_another_task(page, current)
    assert Judgment.objects.filter(task_id=int(current)).exists()
    assert not Judgment.objects.filter(task_id=int(skipped)).exists()


@pytest.mark.django_db(transaction=True)
def test_back_and_forward_never_show_a_submitted_task_as_open(page, live_server, browser_login):
    campaign = _open(page, live_server, browser_login)
    task_id = _task_id(page)
    page.click("text=Campaigns")
    page.wait_for_url(f"{live_server.url}/annotate/")
    # Meanwhile the task is submitted elsewhere (another tab).
    from django.contrib.auth.models import User

    anna = User.objects.get(username="anna")
    task = campaign.tasks.get(pk=int(task_id))
    ranking, ratings = answer_for(task)
    services.judgment_submit(user=anna, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4())
    page.go_back()
    page.wait_for_selector(".task-layout, .task-empty")
    shown = (
        page.get_attribute(".task-layout", "data-task-id") if page.query_selector(".task-layout") else None
    )
    # The page was fetched again (no-store): the next task, or the submitted one marked as gone.
    assert shown != task_id or page.locator(".task-stale").is_visible()
    page.go_forward()
    page.wait_for_url(f"{live_server.url}/annotate/")
    page.go_back()
    page.wait_for_selector(".task-layout")
    assert _task_id(page) != task_id

    # A task left open in this tab and submitted in another says so before any input.
    open_task = _task_id(page)
    task = campaign.tasks.get(pk=int(open_task))
    ranking, ratings = answer_for(task)
    services.judgment_submit(user=anna, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4())
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_selector(".task-stale:not([hidden])")
    assert "already submitted" in page.inner_text(".task-stale")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Open my next task"


@pytest.mark.django_db(transaction=True)
def test_a_reload_keeps_the_ratings_entered_so_far(page, live_server, browser_login):
    _open(page, live_server, browser_login)
    task_id = _task_id(page)
    page.keyboard.type("4444" + "22")
    page.reload()
    page.wait_for_selector("html.annotate-js #task-form")
    assert _task_id(page) == task_id
    assert "Restored" in page.inner_text("#task-status")
    assert page.locator("input[type=radio]:checked").count() == 6
    # Carry on where the ratings stop: the focus starts at the top, so go to the seventh rating.
    page.click(
        '.caption-card[data-letter="B"] .rating-row[data-criterion="vividness"] label.rate:has-text("2")'
    )
    page.keyboard.press("2")
    page.keyboard.type("1111" + "3333")
    page.keyboard.press("Enter")
    _wait_for_another_task(page, task_id)
    judgment = Judgment.objects.get()
    assert sorted(sum(row.values()) for row in judgment.ratings.values()) == [4, 8, 12, 16]
    assert (
        page.evaluate("Object.keys(sessionStorage).filter(k => k.startsWith('loupe-task')).length") == 0
    )  # saved: the copy is gone


@pytest.mark.django_db(transaction=True)
def test_the_last_judgment_can_be_reopened_and_corrected(page, live_server, browser_login, artifacts_dir):
    _open(page, live_server, browser_login)
    first = _task_id(page)
    page.keyboard.type("5555" + "4444" + "3333" + "2222")
    page.keyboard.press("Enter")
    _wait_for_another_task(page, first)
    page.wait_for_selector('.recent a[data-shortcut="p"]')
    page.keyboard.press("p")
    page.wait_for_selector(".task-revising")
    assert _task_id(page) == first
    # The stored answer is on the page: ranked by the ratings, A first.
    assert page.inner_text("#ranking-summary").startswith("Ranked by your ratings: A > B > C > D")
    page.screenshot(path=str(artifacts_dir / "annotate-correct-last.png"))
    # Correct D's ratings to 5: D moves to the top.
    page.click(
        '.caption-card[data-letter="D"] .rating-row[data-criterion="accuracy"] label.rate:has-text("5")'
    )
    page.keyboard.type("555")
    assert page.inner_text("#ranking-summary").startswith("Ranked by your ratings: A = D > B > C")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Correction saved")
    judgment = Judgment.objects.get(task_id=int(first))
    assert judgment.version == 2 and len(judgment.ranking[0]) == 2
    assert JudgmentRevision.objects.get(judgment=judgment).version == 1


@pytest.mark.django_db(transaction=True)
def test_the_image_zooms_and_pans(page, live_server, browser_login, artifacts_dir):
    _open(page, live_server, browser_login)
    page.keyboard.press("z")
    page.wait_for_selector(".zoom-overlay")
    page.keyboard.press("+")
    page.keyboard.press("+")
    page.keyboard.press("ArrowLeft")
    transform = page.eval_on_selector(".zoom-image", "el => el.style.transform")
    assert "scale(1.5625)" in transform and "translate(60px" in transform
    page.screenshot(path=str(artifacts_dir / "annotate-zoom.png"))
    page.keyboard.press("Escape")
    assert page.query_selector(".zoom-overlay") is None
    page.click(".task-image")
    page.wait_for_selector(".zoom-overlay")
    page.mouse.wheel(0, -300)
    assert "scale(1.25)" in page.eval_on_selector(".zoom-image", "el => el.style.transform")
    page.keyboard.press("z")
    assert page.query_selector(".zoom-overlay") is None
    # Keys reach the task again.
    page.keyboard.press("5")
    assert page.locator("input[type=radio]:checked").count() == 1


@pytest.mark.django_db(transaction=True)
def test_after_a_conflict_the_next_task_button_has_focus(page, live_server, browser_login):
    campaign = _open(page, live_server, browser_login)
    task_id = _task_id(page)
    page.keyboard.type("3" * 16)
    from django.contrib.auth.models import User

    task = campaign.tasks.get(pk=int(task_id))
    ranking, ratings = answer_for(task)
    services.judgment_submit(
        user=User.objects.get(username="anna"),
        task=task,
        ranking=ranking,
        ratings=ratings,
        client_key=uuid.uuid4(),
    )
    page.keyboard.press("Enter")
    page.wait_for_selector(".task-error .next-task-button")
    assert "already submitted" in page.inner_text(".task-error")
    assert page.evaluate("document.activeElement.classList.contains('next-task-button')")
    page.keyboard.press("Enter")
    page.wait_for_selector(".task-layout")
    assert _task_id(page) != task_id
