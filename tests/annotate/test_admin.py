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


def test_the_admin_role_opens_the_django_admin_without_is_staff(client, admin_user, django_user_model):
    campaign_with_tasks(images=1)
    assert not admin_user.is_staff
    client.force_login(admin_user)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/annotate/campaign/").status_code == 200
    # is_staff alone (no admin role) no longer opens it: the site follows the role.
    staff_only = django_user_model.objects.create_user("staffer", password="pw", is_staff=True)
    client.force_login(staff_only)
    assert client.get("/admin/").status_code == 302
