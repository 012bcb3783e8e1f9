"""Schemathesis against the API's own OpenAPI schema, in-process (WSGI): no input may cause a server error.

Bounded: FUZZ_EXAMPLES examples per operation (env LOUPE_FUZZ_EXAMPLES) and a per-operation timeout.
Requests carry an admin's token, the role that reaches every operation; a few real rows give the
generated ids something to hit.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from accounts.services import api_token_create
from tests.annotate.factories import campaign_with_tasks
from tests.conftest import make_user

FUZZ_EXAMPLES = int(os.environ.get("LOUPE_FUZZ_EXAMPLES", "20"))

schema = schemathesis.openapi.from_wsgi("/api/openapi.json", get_wsgi_application())


@pytest.fixture
def keep_test_connection():
    """The raw WSGI app closes the database connection after each request (Django's test client does
    not): that would drop the test's transaction, so the hook is off for the test, as in the client."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_token(db, settings, tmp_path, keep_test_connection):
    root = tmp_path / "imports"
    (root / "batch").mkdir(parents=True)
    settings.LOUPE_IMPORT_ROOTS = [str(root)]
    settings.EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    campaign_with_tasks(name="fuzz", images=2, captions_per_image=3, overlap=2)
    return api_token_create(user=make_user("fuzz-admin", "admin"))[1]


@pytest.mark.timeout(180)
@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_api_never_answers_with_a_server_error(case, fuzz_token):
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_token}"}, checks=[not_a_server_error])
