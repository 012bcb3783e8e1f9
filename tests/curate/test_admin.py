"""The Django admin pages of the curation models open for an admin (they moved here from annotate)."""

from __future__ import annotations

import pytest

from tests.annotate.factories import campaign_with_tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="pw-for-tests"))
    return client


@pytest.mark.parametrize("model", ["flag", "review"])
def test_admin_changelists_open(staff_client, model):
    campaign_with_tasks(images=1)
    assert staff_client.get(f"/admin/curate/{model}/").status_code == 200
