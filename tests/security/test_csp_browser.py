"""The Content-Security-Policy in a real browser: Chromium reports every violation on the console.

Complements the HTML audit in test_rendering.py with what only a browser sees (scripts that inject
styles, dynamically created elements). Marked e2e: it runs with the browser tests.
"""

from __future__ import annotations

import httpx
import pytest

from tests.annotate.factories import campaign_with_tasks
from tests.conftest import make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PAGES = [
    "/",
    "/pool/",
    "/pool/imports/",
    "/annotate/",
    "/curate/review/",
    "/scoring/",
    "/curate/filters/",
    "/models/",
    "/console/",
    "/console/jobs/",
    "/api/docs",
]


def test_pages_raise_no_csp_violations(page, browser_login, live_server):
    from django.contrib.auth.models import Group

    for role in ("annotator", "curator", "admin"):
        Group.objects.get_or_create(name=role)
    campaign = campaign_with_tasks(name="csp", images=2, captions_per_image=3)
    make_user("csp-admin", "admin")
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(f"{page.url}: {message.text}")
            if "Content Security Policy" in message.text
            else None
        ),
    )
    # The first request imports every view (torch included); on a busy machine that outlasts a page load.
    httpx.get(f"{live_server.url}/login/", timeout=120)
    page.set_default_timeout(60_000)
    browser_login("csp-admin")
    for path in [*PAGES, f"/annotate/{campaign.pk}/", f"/annotate/{campaign.pk}/next"]:
        page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("networkidle")
    assert not violations, "\n".join(violations)
    # The listener does see violations: an inline script injected now is refused and reported.
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.x = 1'; "
        "document.head.appendChild(s); }"
    )
    page.wait_for_timeout(500)
    assert violations and page.evaluate("window.x") is None
