"""The Django admin pages of the annotation models open for an admin."""

from __future__ import annotations

import pytest

from tests.annotate.factories import campaign_with_tasks, pool_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    # The project's admin_user fixture is an "admin" role user; the Django admin also needs is_staff.
    client.force_login(django_user_model.objects.create_superuser("root", password="pw-for-tests"))
    return client


@pytest.mark.parametrize("model", ["campaign", "task", "assignment", "judgment"])
def test_admin_changelists_open(staff_client, model):
    campaign_with_tasks(images=1)
    assert staff_client.get(f"/admin/annotate/{model}/").status_code == 200


def test_admin_build_action_builds_tasks(staff_client):
    campaign = campaign_with_tasks(images=1)
    pool_create(images=2)
    response = staff_client.post(
        "/admin/annotate/campaign/", {"action": "build_tasks", "_selected_action": [campaign.pk]}, follow=True
    )
    assert response.status_code == 200 and campaign.tasks.count() == 3
