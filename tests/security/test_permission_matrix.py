"""The permission matrix: every URL of the project and every API route, for anonymous, annotator,
curator and admin, allowed or refused as the tables below say. A URL missing from a table fails the test.

How to read an entry: ``Rule(minimum role, methods)``. A role at or above the minimum is allowed, below it
refused. Refused means: anonymous is sent to a login page (302) or gets 401/403; a logged-in user gets 403
(or, for Django's admin site, a redirect to its login). Allowed means anything else but a server error.
A 404 or 405 for an allowed role is a mistake in the table (wrong parameters or methods), so it fails too.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.roles import ADMIN, ANNOTATOR, CURATOR
from annotate import services as annotate_services
from annotate.models import Judgment
from config.api import api
from curate.models import Export, FilterRun, Flag
from pool.models import CleaningRun, ImportRun
from scoring.models import Score, ScoringRun
from tests.annotate.factories import answer_for, campaign_with_tasks
from tests.conftest import make_user

PUBLIC = "public"  # no login needed; only checked for "no server error"
LOGIN = "login"  # any logged-in user, whatever their role
STAFF = "staff"  # Django's admin site: is_staff users only, none of the role users below
ROLES = [None, ANNOTATOR, CURATOR, ADMIN]
RANK = {None: 0, ANNOTATOR: 1, CURATOR: 2, ADMIN: 3}


@dataclass(frozen=True)
class Rule:
    minimum: str
    methods: tuple[str, ...] = ("GET",)
    params: dict = field(default_factory=dict)  # path parameter -> key in the rows fixture, when not by name
    body: dict | None = None  # JSON body for API writes (valid enough to pass validation)
    note: str = ""
    # The row used belongs to another user, so an allowed role gets 404 (ownership, not permission).
    not_found_ok: bool = False
    # Only the refusals are checked: URLs of a third-party app that need query parameters or rows the
    # table cannot give (the Django admin's autocomplete, "view on site", regex app lists).
    only_refusals: bool = False


# --- pages: route (as Django spells it) -> rule ----------------------------------------------------
PAGES: dict[str, Rule] = {
    "": Rule(LOGIN),
    "healthz": Rule(PUBLIC),
    "login/": Rule(PUBLIC, note="POST is the login itself: tests/security/test_login_rate_limit.py"),
    "logout/": Rule(PUBLIC, ("POST",)),
    "media/<path:path>": Rule(LOGIN),
    # pool
    "pool/": Rule(CURATOR),
    "pool/images/<int:image_id>/": Rule(CURATOR),
    # Like media/: any signed-in user (annotators see their tasks' images through it).
    "pool/images/<int:image_id>/file": Rule(LOGIN),
    "pool/images/<int:image_id>/thumb": Rule(LOGIN),
    "pool/shards/": Rule(CURATOR),
    "pool/imports/": Rule(CURATOR),
    "pool/imports/start/": Rule(ADMIN, ("POST",)),
    "pool/imports/<int:run_id>/": Rule(CURATOR, params={"run_id": "import_run_id"}),
    "pool/imports/<int:run_id>/progress/": Rule(CURATOR, params={"run_id": "import_run_id"}),
    "pool/cleaning/": Rule(CURATOR),
    "pool/cleaning/start/": Rule(ADMIN, ("POST",)),
    "pool/cleaning/<int:run_id>/": Rule(CURATOR, params={"run_id": "cleaning_run_id"}),
    "pool/cleaning/<int:run_id>/progress/": Rule(CURATOR, params={"run_id": "cleaning_run_id"}),
    # annotate
    "annotate/": Rule(ANNOTATOR),
    "annotate/new": Rule(ADMIN, ("GET", "POST")),
    "annotate/<int:campaign_id>/": Rule(ADMIN),
    "annotate/<int:campaign_id>/build": Rule(ADMIN, ("POST",)),
    "annotate/<int:campaign_id>/export/<str:fmt>": Rule(ADMIN, params={"fmt": "export_fmt"}),
    "annotate/<int:campaign_id>/next": Rule(ANNOTATOR),
    "annotate/<int:campaign_id>/progress": Rule(ANNOTATOR),
    "annotate/<int:campaign_id>/tasks/<int:task_id>/submit": Rule(ANNOTATOR, ("POST",)),
    "annotate/<int:campaign_id>/tasks/<int:task_id>/skip": Rule(ANNOTATOR, ("POST",)),
    "annotate/<int:campaign_id>/tasks/<int:task_id>/state": Rule(ANNOTATOR),
    "annotate/<int:campaign_id>/judgments/<int:judgment_id>/revise": Rule(
        ANNOTATOR, ("GET", "POST"), not_found_ok=True, note="own judgments only: 404 for others'"
    ),
    # Django admin's own login and logout answer everyone; the rest of admin/ is for staff (PREFIXES).
    "admin/login/": Rule(PUBLIC),
    "admin/logout/": Rule(PUBLIC),
    "admin/": Rule(ADMIN),
    # curator review
    "curate/review/": Rule(CURATOR),
    "curate/review/bulk": Rule(CURATOR, ("POST",)),
    "curate/review/audit": Rule(CURATOR),
    "curate/review/<int:caption_id>/decide": Rule(CURATOR, ("POST",)),
    "curate/review/<int:caption_id>/undo": Rule(CURATOR, ("POST",)),
    "curate/review/clusters/<int:image_id>/decide": Rule(CURATOR, ("POST",)),
    "curate/review/clusters/<int:image_id>/undo": Rule(CURATOR, ("POST",)),
    "curate/review/<int:caption_id>/suggest": Rule(CURATOR, ("POST",)),
    "curate/review/<int:caption_id>/suggestion": Rule(CURATOR),
    # scoring runs
    "scoring/": Rule(CURATOR),
    "curate/judge/": Rule(CURATOR),
    "curate/judge/runs": Rule(ADMIN, ("POST",)),
    "curate/judge/rewrites": Rule(ADMIN, ("POST",)),
    "scoring/runs/start/": Rule(ADMIN, ("POST",)),
    "scoring/runs/<int:run_id>/": Rule(CURATOR, params={"run_id": "scoring_run_id"}),
    "scoring/runs/<int:run_id>/progress/": Rule(CURATOR, params={"run_id": "scoring_run_id"}),
    "scoring/runs/<int:run_id>/cancel/": Rule(ADMIN, ("POST",), params={"run_id": "scoring_run_id"}),
    "scoring/runs/<int:run_id>/resume/": Rule(ADMIN, ("POST",), params={"run_id": "scoring_run_id"}),
    # the admin console (jobs of every kind; the scoring run stands for them)
    "console/": Rule(ADMIN),
    "console/loop/start/": Rule(ADMIN, ("POST",)),
    "console/jobs/": Rule(ADMIN),
    "console/jobs/<str:kind>/<int:run_id>/": Rule(
        ADMIN, params={"kind": "job_kind", "run_id": "scoring_run_id"}
    ),
    "console/jobs/<str:kind>/<int:run_id>/progress/": Rule(
        ADMIN, params={"kind": "job_kind", "run_id": "scoring_run_id"}
    ),
    "console/jobs/<str:kind>/<int:run_id>/cancel/": Rule(
        ADMIN, ("POST",), params={"kind": "job_kind", "run_id": "scoring_run_id"}
    ),
    "console/jobs/<str:kind>/<int:run_id>/retry/": Rule(
        ADMIN, ("POST",), params={"kind": "job_kind", "run_id": "scoring_run_id"}
    ),
    # scoring: filters and exports
    "curate/filters/": Rule(CURATOR),
    "curate/filters/preview": Rule(CURATOR),
    "curate/filters/runs": Rule(CURATOR, ("POST",)),
    "curate/filters/runs/<int:run_id>/": Rule(CURATOR, params={"run_id": "filter_run_id"}),
    "curate/filters/runs/<int:run_id>/progress": Rule(CURATOR, params={"run_id": "filter_run_id"}),
    # Curators export what a filter run keeps (issue 14); the API's export routes stay admin-only.
    "curate/filters/runs/<int:run_id>/export": Rule(CURATOR, ("POST",), params={"run_id": "filter_run_id"}),
    "curate/filters/runs/<int:run_id>/downstream": Rule(ADMIN, ("POST",), params={"run_id": "filter_run_id"}),
    "curate/filters/exports/<int:export_id>/progress": Rule(CURATOR),
    "curate/filters/exports/<int:export_id>/files/<str:name>": Rule(CURATOR, params={"name": "export_file"}),
    # reward models
    "models/": Rule(ADMIN),
    "models/train/": Rule(ADMIN, ("POST",)),
    "models/rollback/": Rule(ADMIN, ("POST",)),
    "models/runs/<int:pk>/progress/": Rule(ADMIN, params={"pk": "training_run_id"}),
    "models/<int:version>/": Rule(ADMIN, params={"version": "model_version"}),
    "models/<int:version>/promote/": Rule(ADMIN, ("POST",), params={"version": "model_version"}),
    # accounts (mounted by config/urls.py as accounts/)
    "accounts/tokens/": Rule(LOGIN),
    "accounts/tokens/new/": Rule(LOGIN, ("POST",)),
    "accounts/tokens/<int:token_id>/revoke/": Rule(
        LOGIN, ("POST",), not_found_ok=True, note="own tokens only: 404 for others'"
    ),
}
# Third-party URL families, one rule each (every one of their URLs is still requested).
PREFIXES: dict[str, Rule] = {
    # The Django admin follows the admin role (accounts/admin_site.py), not is_staff. Its index is checked
    # both ways (PAGES); its other URLs for the refusals.
    "admin/": Rule(ADMIN, only_refusals=True),
    "static/": Rule(PUBLIC),
    # Old homes of the curation pages: redirects only; the pages they lead to check the role.
    "annotate/review/": Rule(PUBLIC),
    "scoring/filters/": Rule(PUBLIC),
}

# --- API: (method, path as in the OpenAPI schema) -> rule --------------------------------------------
A = "annotator"
API: dict[tuple[str, str], Rule] = {
    ("GET", "/api/me"): Rule(LOGIN),
    ("GET", "/api/images"): Rule(CURATOR),
    ("GET", "/api/images/{image_id}"): Rule(CURATOR),
    ("GET", "/api/shards"): Rule(CURATOR),
    ("GET", "/api/captions"): Rule(CURATOR),
    ("GET", "/api/scores"): Rule(CURATOR),
    ("GET", "/api/flags"): Rule(CURATOR),
    ("POST", "/api/imports"): Rule(ADMIN, body={"source": "batch"}),
    ("POST", "/api/imports/upload"): Rule(ADMIN, note="multipart; body built in the test"),
    ("GET", "/api/imports"): Rule(ADMIN),
    ("GET", "/api/imports/{run_id}"): Rule(ADMIN, params={"run_id": "import_run_id"}),
    ("GET", "/api/campaigns"): Rule(ANNOTATOR),
    ("POST", "/api/campaigns/{campaign_id}/next-task"): Rule(ANNOTATOR),
    ("POST", "/api/judgments"): Rule(ANNOTATOR, note="body built in the test"),
    ("GET", "/api/judgments"): Rule(ANNOTATOR),
    ("GET", "/api/judgments/{judgment_id}"): Rule(ANNOTATOR, note="own only: others get 404"),
    ("POST", "/api/scoring-runs"): Rule(
        ADMIN, body={"encoder": "offline:effnet-minilm", "reward_model_version": 0}
    ),
    ("GET", "/api/scoring-runs"): Rule(ADMIN),
    ("GET", "/api/scoring-runs/{run_id}"): Rule(ADMIN, params={"run_id": "scoring_run_id"}),
    ("POST", "/api/scoring-runs/{run_id}/cancel"): Rule(ADMIN, params={"run_id": "scoring_run_id"}),
    ("GET", "/api/judge-scores"): Rule(CURATOR),
    ("POST", "/api/judge-runs"): Rule(
        ADMIN,
        body={"scorer": "vlm:/nonexistent/judge", "encoder": "offline:effnet-minilm"},
        note="a judge that is not there is a 400 for admins",
    ),
    ("GET", "/api/exports"): Rule(ADMIN),
    ("GET", "/api/exports/{export_id}"): Rule(ADMIN),
    ("GET", "/api/exports/{export_id}/download"): Rule(ADMIN),
}


# --- walking ---------------------------------------------------------------------------------------


def project_routes(resolver=None, prefix: str = "") -> list[tuple[str, URLPattern]]:
    """Every concrete URL pattern of the project as (route, pattern), the API's own patterns left out."""
    resolver = resolver or get_resolver()
    found = []
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            if route == "api/":
                continue
            found.extend(project_routes(entry, route))
        else:
            found.append((route, entry))
    return found


def rule_for_page(route: str) -> Rule | None:
    if route in PAGES:
        return PAGES[route]
    for prefix, rule in PREFIXES.items():
        if route.startswith(prefix) or route.startswith("^" + prefix):
            return rule
    return None


def api_routes() -> list[tuple[str, str]]:
    schema = api.get_openapi_schema()
    return [(method.upper(), path) for path, item in schema["paths"].items() for method in item]


def test_every_url_is_in_the_table():
    missing = [route for route, _ in project_routes() if rule_for_page(route) is None]
    assert not missing, (
        "Every URL must be in the table (tests/security/test_permission_matrix.py PAGES):\n"
        + ("\n".join(f"  {route!r}" for route in missing))
    )


def test_every_api_route_is_in_the_table():
    missing = [route for route in api_routes() if route not in API]
    assert not missing, "Every API route must be in the table (API):\n" + "\n".join(f"  {m}" for m in missing)


# --- rows the URLs point at -----------------------------------------------------------------------


@pytest.fixture
def rows(db, settings, tmp_path):
    """One real row behind every path parameter; values by parameter name (or a Rule's params key)."""
    campaign = campaign_with_tasks(name="matrix", images=2, captions_per_image=3, overlap=2)
    task = campaign.tasks.order_by("id").first()
    other = make_user("zed-other-annotator", ANNOTATOR)
    assignment = annotate_services.task_next(campaign=campaign, user=other)
    ranking, ratings = answer_for(assignment.task)
    judgment = annotate_services.judgment_submit(
        user=other, task=assignment.task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
    )
    caption = task.captions.first()
    image = task.image
    Score.objects.create(caption=caption, encoder="enc", reward_model_version=0, clipscore=0.5)
    Flag.objects.create(caption=caption, reason="low_reward")
    export_folder = settings.EXPORT_DIR / "export-1"
    export_folder.mkdir(parents=True, exist_ok=True)
    (export_folder / "kept.jsonl").write_text("{}\n")
    export = Export.objects.create(kind="jsonl", path=str(export_folder), status="succeeded")
    from training.models import RewardModel, TrainingRun

    reward_model = RewardModel.objects.create(
        version=7, encoder="enc", checkpoint="none.pt", checkpoint_sha256="0"
    )
    filter_run = FilterRun.objects.create(encoder="enc")
    from accounts.services import api_token_create

    token, _ = api_token_create(user=other)
    import_root = tmp_path / "import-root"
    (import_root / "batch").mkdir(parents=True)
    settings.LOUPE_IMPORT_ROOTS = [str(import_root)]
    media_file = settings.MEDIA_ROOT / image.file
    return {
        "campaign_id": campaign.pk,
        "task_id": task.pk,
        "image_id": image.pk,
        "caption_id": caption.pk,
        "judgment_id": judgment.pk,
        "flag_id": Flag.objects.get().pk,
        "export_id": export.pk,
        "export_file": "kept.jsonl",
        "job_kind": "scoring",
        "model_version": reward_model.version,
        "training_run_id": TrainingRun.objects.create(encoder="enc").pk,
        "filter_run_id": filter_run.pk,
        "import_run_id": ImportRun.objects.create(source="x", format="folder").pk,
        "cleaning_run_id": CleaningRun.objects.create().pk,
        "scoring_run_id": ScoringRun.objects.create(encoder="enc").pk,
        "token_id": token.pk,
        "export_fmt": "pairs",
        "rest": "",  # the old curation prefixes redirect whatever follows them
        "path": str(media_file.relative_to(settings.MEDIA_ROOT)),
        # Django admin's own parameters
        "app_label": "auth",
        "object_id": str(other.pk),
        "id": other.pk,
        "content_type_id": 1,
        "url": "auth/user/",
    }


_CONVERTER = re.compile(r"<(?:(?P<conv>[^>:]+):)?(?P<name>[^>]+)>")
_REGEX_GROUP = re.compile(r"\(\?P<(?P<name>\w+)>(?:[^()]|\([^()]*\))*\)")


def concrete_path(route: str, rule: Rule, rows: dict) -> str:
    def value(name: str) -> str:
        key = rule.params.get(name, name)
        if key not in rows:
            raise AssertionError(
                f"No row for path parameter {name!r} of {route!r}: add it to the rows fixture."
            )
        return str(rows[key])

    path = _CONVERTER.sub(lambda m: value(m.group("name")), route)
    path = _REGEX_GROUP.sub(lambda m: value(m.group("name")), path)
    path = path.replace("^", "").replace("$", "").replace("\\", "")
    return "/" + path


# --- requests and verdicts --------------------------------------------------------------------------


def client_for(role: str | None, users: dict) -> Client:
    client = Client()
    if role is not None:
        client.force_login(users[role])
    return client


def allowed_for(rule: Rule, role: str | None) -> bool:
    if rule.minimum == PUBLIC:
        return True
    if rule.minimum == STAFF:
        return False
    if rule.minimum == LOGIN:
        return role is not None
    return RANK[role] >= RANK[rule.minimum]


def page_refused(response) -> bool:
    if response.status_code in {401, 403}:
        return True
    location = response.get("Location", "") if response.status_code in {301, 302} else ""
    return "/login/" in location


def api_refused(response) -> bool:
    if response.status_code == 401:
        return True
    if response.status_code == 403:
        detail = response.json().get("detail", "")
        return detail.startswith("This needs the") or "CSRF" in detail
    return False


@pytest.fixture
def users(db):
    return {role: make_user(f"matrix-{role}", role) for role in ROLES if role}


@pytest.mark.django_db
def test_pages_allow_and_refuse_by_role(rows, users):
    failures = []
    for route, _pattern in project_routes():
        rule = rule_for_page(route)
        if rule is None:
            continue  # reported by test_every_url_is_in_the_table
        path = concrete_path(route, rule, rows)
        for method in rule.methods:
            for role in ROLES:
                client = client_for(role, users)
                response = client.get(path) if method == "GET" else client.post(path, {})
                expected = allowed_for(rule, role)
                if rule.minimum == PUBLIC:
                    continue  # any answer but a server error (raised by the test client) is fine
                refused = page_refused(response)
                bad_codes = {405} if rule.not_found_ok else {404, 405}
                if expected and rule.only_refusals:
                    continue
                if expected and (refused or response.status_code in bad_codes):
                    failures.append(
                        f"{method} {path} as {role}: expected allowed, got {response.status_code}"
                    )
                elif not expected and not refused:
                    failures.append(
                        f"{method} {path} as {role}: expected refused, got {response.status_code}"
                    )
    assert not failures, "\n".join(failures)


def api_request(client: Client, method: str, path: str, rule: Rule, rows: dict):
    if path == "/api/imports/upload":
        from django.core.files.uploadedfile import SimpleUploadedFile

        return client.post(path, {"file": SimpleUploadedFile("x.html", b"<p>")})
    if path == "/api/judgments" and method == "POST":
        body = {"task_id": 2**40, "ranking": [[1]], "ratings": {}, "client_key": str(uuid.uuid4())}
        return client.post(path, body, content_type="application/json")
    if method == "GET":
        return client.get(path)
    return client.post(path, rule.body or {}, content_type="application/json")


@pytest.mark.django_db
def test_api_routes_allow_and_refuse_by_role(rows, users):
    from accounts.services import api_token_create

    tokens = {role: api_token_create(user=users[role])[1] for role in ROLES if role}
    failures = []
    for method, openapi_path in api_routes():
        rule = API.get((method, openapi_path))
        if rule is None:
            continue  # reported by test_every_api_route_is_in_the_table
        path = concrete_path(re.sub(r"\{(\w+)\}", r"<\1>", openapi_path.lstrip("/")), rule, rows)
        for role in ROLES:
            client = Client(HTTP_AUTHORIZATION=f"Bearer {tokens[role]}") if role else Client()
            response = api_request(client, method, path, rule, rows)
            assert response.status_code < 500, f"{method} {path} as {role}: {response.status_code}"
            expected = allowed_for(rule, role)
            refused = api_refused(response)
            if expected and (refused or response.status_code == 405):
                failures.append(f"{method} {path} as {role}: expected allowed, got {response.status_code}")
            elif not expected and not refused:
                failures.append(f"{method} {path} as {role}: expected refused, got {response.status_code}")
    assert not failures, "\n".join(failures)


# --- CSRF -------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("htmx", [False, True], ids=["form", "htmx"])
def test_every_post_without_csrf_token_is_refused(rows, users, htmx):
    """Each URL that takes POST refuses it without the CSRF token, for a user allowed to use it."""
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    checked = []
    for route, _pattern in project_routes():
        rule = rule_for_page(route)
        if rule is None or "POST" not in rule.methods:
            continue
        role = ADMIN if rule.minimum in {ADMIN, STAFF, PUBLIC, LOGIN} else rule.minimum
        client = Client(enforce_csrf_checks=True)
        client.force_login(users[role])
        path = concrete_path(route, rule, rows)
        response = client.post(path, {}, **headers)
        assert response.status_code == 403, f"POST {path} without a CSRF token got {response.status_code}"
        checked.append(path)
    for method, openapi_path in api_routes():
        if method == "GET":
            continue
        rule = API[(method, openapi_path)]
        client = Client(enforce_csrf_checks=True)
        client.force_login(users[ADMIN])
        path = concrete_path(re.sub(r"\{(\w+)\}", r"<\1>", openapi_path.lstrip("/")), rule, rows)
        response = client.post(path, rule.body or {}, content_type="application/json", **headers)
        assert response.status_code == 403, (
            f"session POST {path} without a CSRF token got {response.status_code}"
        )
        checked.append(path)
    assert checked and "/logout/" in checked


@pytest.mark.django_db
def test_admin_site_login_post_needs_csrf(users):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/admin/login/", {"username": "x", "password": "y"}).status_code == 403


# --- annotators never read another annotator's judgments -------------------------------------------


@pytest.mark.django_db
def test_annotator_pages_never_show_another_annotators_judgments(rows, users):
    """As an annotator, every page they may open is free of the other annotator's name and answers."""
    client = client_for(ANNOTATOR, users)
    other_judgment = Judgment.objects.get(pk=rows["judgment_id"])
    for route, _pattern in project_routes():
        rule = rule_for_page(route)
        if rule is None or "GET" not in rule.methods or not allowed_for(rule, ANNOTATOR):
            continue
        path = concrete_path(route, rule, rows)
        response = client.get(path)
        if response.status_code != 200 or not response.get("Content-Type", "").startswith("text/html"):
            continue
        html = response.content.decode()
        assert "zed-other-annotator" not in html, path
        assert str(other_judgment.client_key) not in html, path


@pytest.mark.django_db
def test_api_never_shows_another_annotators_judgments(rows, users):
    from accounts.services import api_token_create

    for role in (ANNOTATOR, CURATOR, ADMIN):
        client = Client(HTTP_AUTHORIZATION=f"Bearer {api_token_create(user=users[role])[1]}")
        assert client.get("/api/judgments").json()["items"] == [], role
        assert client.get(f"/api/judgments/{rows['judgment_id']}").status_code == 404, role
