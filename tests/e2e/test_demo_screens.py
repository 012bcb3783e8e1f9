"""After ``manage.py demo --small``, every role's main screens have real content on the first visit.

Runs the real demo (offline encoder, simulated annotators, one loop pass) in this process, then opens
each role's screens in Chromium and saves a screenshot of each under test-artifacts/demo-*.png.
Slow (about two minutes on a loaded 2-core machine): it is the demo itself.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from annotate.models import Campaign
from curate.models import FilterRun
from loop.models import LoopRun
from training.models import RewardModel

PASSWORDS = {"admin": "loupe-admin", "curator": "loupe-curator", "annotator": "loupe-annotator"}


def _login(browser, live_server, username: str):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORDS[username])
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    return context, page


def _shoot(page, live_server, artifacts_dir, path: str, name: str, *, must_show: str) -> str:
    page.goto(f"{live_server.url}{path}")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(artifacts_dir / f"demo-{name}.png"), full_page=True)
    text = page.inner_text("main")
    assert must_show in text, f"{path}: expected {must_show!r} on the page"
    return text


@pytest.mark.django_db(transaction=True)
def test_every_role_finds_content_after_the_small_demo(browser, live_server, artifacts_dir):
    out = StringIO()
    call_command("demo", small=True, stdout=out)
    (artifacts_dir / "demo-small-seed.log").write_text(out.getvalue())
    reverse("home")  # load the URLconf here, not in the live server's first request
    campaign = Campaign.objects.get()
    loop_run = LoopRun.objects.get()
    filter_run = FilterRun.objects.get()
    model = RewardModel.objects.get()

    context, page = _login(browser, live_server, "annotator")
    try:
        _shoot(page, live_server, artifacts_dir, "/annotate/", "annotator-campaigns", must_show=campaign.name)
        _shoot(
            page,
            live_server,
            artifacts_dir,
            f"/annotate/{campaign.pk}/next",
            "annotator-task",
            must_show="Rate each caption",
        )
    finally:
        context.close()

    context, page = _login(browser, live_server, "curator")
    try:
        _shoot(page, live_server, artifacts_dir, "/pool/", "curator-pool", must_show="")
        review = _shoot(
            page, live_server, artifacts_dir, "/curate/review/", "curator-review", must_show="Review queue"
        )
        assert "Nothing to review" not in review
        _shoot(
            page,
            live_server,
            artifacts_dir,
            "/curate/filters/",
            "curator-filters",
            must_show=f"#{filter_run.pk}",
        )
        _shoot(
            page,
            live_server,
            artifacts_dir,
            f"/curate/filters/runs/{filter_run.pk}/",
            "curator-filter-run",
            must_show="pair ",
        )
    finally:
        context.close()

    context, page = _login(browser, live_server, "admin")
    try:
        _shoot(page, live_server, artifacts_dir, "/console/", "admin-console", must_show="The loop")
        _shoot(
            page, live_server, artifacts_dir, "/console/jobs/", "admin-jobs", must_show=f"Loop {loop_run.pk}"
        )
        _shoot(
            page,
            live_server,
            artifacts_dir,
            f"/console/jobs/loop/{loop_run.pk}/",
            "admin-loop-run",
            must_show="retrain",
        )
        _shoot(page, live_server, artifacts_dir, "/models/", "admin-models", must_show=f"v{model.version}")
        _shoot(
            page,
            live_server,
            artifacts_dir,
            f"/models/{model.version}/",
            "admin-model",
            must_show="Held-out evaluation",
        )
        campaign_page = _shoot(
            page,
            live_server,
            artifacts_dir,
            f"/annotate/{campaign.pk}/",
            "admin-campaign",
            must_show="sim-annotator-1",
        )
        assert "No judgments yet" not in campaign_page
        _shoot(
            page,
            live_server,
            artifacts_dir,
            "/admin/",
            "admin-django-admin",
            must_show="Data, users and schedules",
        )
    finally:
        context.close()
