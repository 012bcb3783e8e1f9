"""A page for another role answers with a styled 403 that names the role, and logs no traceback."""

from __future__ import annotations

import logging

import pytest

pytestmark = pytest.mark.django_db


def test_a_wrong_role_page_is_a_styled_403_naming_the_role(client, annotator, caplog):
    client.force_login(annotator)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.get("/console/")
    html = response.content.decode()
    assert response.status_code == 403
    assert "This page needs the admin role." in html
    assert 'class="topbar"' in html and "with the <strong>annotator</strong> role" in html
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    assert record.getMessage().startswith("Forbidden") and record.exc_info is None
