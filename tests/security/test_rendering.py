"""Pages satisfy the Content-Security-Policy, and hostile captions are rendered inert on every page.

Walks the same URLs as the permission matrix, as each role, and checks the HTML it gets back.
"""

from __future__ import annotations

import json
import uuid
from html.parser import HTMLParser

import pytest
from django.test import Client

from accounts.roles import ADMIN, ANNOTATOR, CURATOR
from annotate import services as annotate_services
from curate.models import Flag
from scoring.models import Score
from tests.annotate.factories import caption_create, image_create
from tests.conftest import make_user
from tests.security.test_permission_matrix import (
    allowed_for,
    concrete_path,
    project_routes,
    rows,  # noqa: F401 - fixture
    rule_for_page,
)

MARK = "HOSTILE-CAPTION"
RLO, LRO, PDF = "\u202e", "\u202d", "\u202c"
HOSTILE = f"{MARK} <script>alert('x')</script><img src=x onerror=alert(1)> \x07bell {RLO}gnp.exe{PDF} \"quote' & amp"
BIDI_CONTROLS = {"\u202a", "\u202b", RLO, LRO, PDF, "\u2066", "\u2067", "\u2068", "\u2069"}


class CspAudit(HTMLParser):
    """Collects what a strict CSP (script-src 'self'; style-src 'self') would block."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._in_script = False
        self._stack: list[tuple[str, bool]] = []  # (tag, isolates bidi)
        self.unisolated_bidi: list[str] = []
        self.text = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            kind = (attrs.get("type") or "").lower()
            if "src" not in attrs and kind not in {"application/json", "application/ld+json"}:
                self.problems.append("inline <script>")
            self._in_script = True
        if tag == "style":
            self.problems.append("<style> element")
        for name, value in attrs.items():
            if name.startswith("on"):
                self.problems.append(f"inline handler {name}= on <{tag}>")
            if name == "style":
                self.problems.append(f"style= attribute on <{tag}>")
            if name in {"href", "src", "action", "formaction"} and (value or "").strip().lower().startswith(
                "javascript:"
            ):
                self.problems.append(f"javascript: URL in {name}= on <{tag}>")
            if name.startswith("hx-on"):
                self.problems.append(f"{name} (htmx inline handler, needs unsafe-eval)")
        if tag not in {"br", "img", "input", "meta", "link", "hr", "source", "col", "wbr"}:
            self._stack.append((tag, tag == "bdi" or "dir" in attrs))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        self.text.append(data)
        if any(ch in BIDI_CONTROLS for ch in data) and not any(isolates for _, isolates in self._stack):
            self.unisolated_bidi.append(data.strip()[:60])


def audit(html: str) -> CspAudit:
    parser = CspAudit()
    parser.feed(html)
    parser.close()
    return parser


@pytest.fixture
def hostile(db, rows):  # noqa: F811 - the fixture imported above
    """A caption full of markup, control and bidi characters, in a task, a flag, a score and the pool."""
    image = image_create(source="hostile")
    caption = caption_create(image=image, text=HOSTILE)
    for i in range(2):
        caption_create(image=image, text=f"plain caption {i}")
    campaign = annotate_services.campaign_create(
        name="hostile",
        gold_rate=0.0,
        overlap=2,
        captions_per_task=3,
        pool_filter={"image_sources": ["hostile"]},
    )
    annotate_services.campaign_tasks_build(campaign=campaign)
    Flag.objects.create(caption=caption, reason="low_reward")
    Score.objects.create(caption=caption, encoder="enc", reward_model_version=0, clipscore=0.1, reward=-3.0)
    return {**rows, "image_id": image.pk, "caption_id": caption.pk, "campaign_id": campaign.pk}


def html_pages(role: str, params: dict):
    """(path, html) of every GET page the role may open that answers 200 with HTML."""
    client = Client()
    client.force_login(make_user(f"render-{role}-{uuid.uuid4().hex[:6]}", role))
    for route, _ in project_routes():
        rule = rule_for_page(route)
        if rule is None or "GET" not in rule.methods or not allowed_for(rule, role):
            continue
        if route.startswith("admin/") or route.startswith("^admin/"):
            continue  # Django's admin: checked in test_admin_pages_satisfy_the_policy
        path = concrete_path(route, rule, params)
        response = client.get(path)
        if response.status_code == 200 and response.get("Content-Type", "").startswith("text/html"):
            yield path, response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("role", [ANNOTATOR, CURATOR, ADMIN])
def test_pages_satisfy_the_content_security_policy(hostile, role):
    problems = {}
    for path, html in html_pages(role, hostile):
        found = audit(html).problems
        if found:
            problems[path] = sorted(set(found))
    assert not problems, "Pages the CSP would break:\n" + "\n".join(
        f"  {p}: {v}" for p, v in problems.items()
    )


@pytest.mark.django_db
@pytest.mark.parametrize("role", [ANNOTATOR, CURATOR, ADMIN])
def test_hostile_captions_render_escaped_on_every_page(hostile, role):
    shown = []
    for path, html in html_pages(role, hostile):
        if MARK not in html:
            continue
        shown.append(path)
        assert "<script>alert" not in html, path
        assert "onerror=alert" not in html.replace("onerror=alert(1)&gt;", ""), path
        assert "<img src=x" not in html, path
        parsed = audit(html)
        assert not parsed.problems, (path, parsed.problems)
    expected = {ANNOTATOR: ["next"], CURATOR: ["/pool/", "/curate/review/"], ADMIN: ["/pool/images/"]}
    for fragment in expected[role]:
        assert any(fragment in path for path in shown), (
            f"the hostile caption was not on a {fragment} page: {shown}"
        )


@pytest.mark.django_db
def test_bidi_overrides_in_captions_are_isolated(hostile):
    unisolated = {}
    for role in (ANNOTATOR, ADMIN):
        for path, html in html_pages(role, hostile):
            if MARK in html and audit(html).unisolated_bidi:
                unisolated[path] = audit(html).unisolated_bidi
    assert not unisolated, unisolated


@pytest.mark.django_db
def test_api_json_escapes_hostile_captions(hostile):
    from accounts.services import api_token_create

    user = make_user("render-api-curator", CURATOR)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {api_token_create(user=user)[1]}")
    response = client.get(f"/api/captions?image_id={hostile['image_id']}")
    raw = response.content.decode()
    assert response["Content-Type"].startswith("application/json")
    assert "\x07" not in raw and RLO not in raw  # escaped as \u0007 and \u202e
    assert "\\u0007" in raw and "\\u202e" in raw.lower()
    assert HOSTILE in [c["text"] for c in json.loads(raw)["items"]]


# django_celery_beat's periodic-task form carries an inline script (its crontab helper); under the CSP
# that helper does not run, the form still works. Listed here so a new offender still fails.
ADMIN_PAGES_WITH_KNOWN_INLINE_SCRIPT = {"django_celery_beat/periodictask/add/"}


@pytest.mark.django_db
def test_admin_pages_satisfy_the_policy():
    """Django's admin (index, and every registered model's list and add pages) for a superuser."""
    from django.contrib import admin
    from django.contrib.auth.models import User

    client = Client()
    client.force_login(User.objects.create_superuser("csp-root", password="x"))
    paths = ["/admin/"]
    for model in admin.site._registry:
        base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        paths += [base, base + "add/"]
    problems = {}
    for path in paths:
        response = client.get(path)
        assert response.status_code in {200, 403}, (path, response.status_code)
        found = audit(response.content.decode()).problems if response.status_code == 200 else []
        if found and path.removeprefix("/admin/") not in ADMIN_PAGES_WITH_KNOWN_INLINE_SCRIPT:
            problems[path] = sorted(set(found))
    assert not problems, problems
