"""The foundation: settings, roles, login, and the production compose file."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest
import yaml
from django.contrib.auth.models import Group
from django.urls import reverse

from accounts.roles import ADMIN, ANNOTATOR, CURATOR, has_role, user_role
from tests.conftest import make_user

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_role_groups_are_created_by_migration():
    assert set(Group.objects.values_list("name", flat=True)) >= {ANNOTATOR, CURATOR, ADMIN}


@pytest.mark.django_db
def test_roles_are_hierarchical():
    curator = make_user("c", CURATOR)
    assert user_role(curator) == CURATOR
    assert has_role(curator, ANNOTATOR) and has_role(curator, CURATOR)
    assert not has_role(curator, ADMIN)
    nobody = make_user("n", None)
    assert user_role(nobody) is None and not has_role(nobody, ANNOTATOR)


@pytest.mark.django_db
def test_login_page_uses_product_look(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b"Log in to Loupe" in response.content
    assert b"css/loupe.css" in response.content


@pytest.mark.django_db
def test_home_redirects_anonymous_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.django_db
def test_user_logs_in_and_sees_role_tiles(client):
    make_user("ada", ADMIN, password="secret-pass")
    response = client.post(reverse("login"), {"username": "ada", "password": "secret-pass"}, follow=True)
    assert response.status_code == 200
    assert b"Welcome, ada" in response.content
    assert b"Console" in response.content


@pytest.mark.django_db
def test_wrong_password_says_so(client):
    make_user("ada", ADMIN, password="secret-pass")
    response = client.post(reverse("login"), {"username": "ada", "password": "nope"})
    assert b"didn&#x27;t match" in response.content or b"didn't match" in response.content


@pytest.mark.django_db
def test_media_needs_login(client, settings, tmp_path):
    (settings.MEDIA_ROOT / "images").mkdir(parents=True)
    (settings.MEDIA_ROOT / "images" / "x.txt").write_text("hi")
    assert client.get("/media/images/x.txt").status_code == 302
    client.force_login(make_user("a", ANNOTATOR))
    assert client.get("/media/images/x.txt").status_code == 200
    assert client.get("/media/../pyproject.toml").status_code in {400, 404}


@pytest.mark.django_db
def test_healthz(client):
    assert client.get("/healthz").json() == {"ok": True}


def _command_target_exists(command: list[str]) -> bool:
    """Each service command names a program whose target exists in this repository."""
    program = command[0]
    if program == "gunicorn":
        module, attribute = command[1].split(":")
        return hasattr(importlib.import_module(module), attribute)
    if program == "celery":
        return importlib.import_module(command[command.index("-A") + 1]).celery_app is not None
    if program == "python" and command[1] == "manage.py":
        from django.core.management import get_commands

        return (ROOT / "manage.py").exists() and command[2] in get_commands()
    return False


def test_docker_compose_is_valid_and_commands_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "worker-gpu", "beat"} <= set(services)
    for name in ("postgres", "redis", "web"):
        assert "healthcheck" in services[name], name
    assert services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == [
        "gpu"
    ]
    assert "-Q" in services["worker-gpu"]["command"] and "gpu" in services["worker-gpu"]["command"]
    for name, service in services.items():
        if "command" in service and name not in {"postgres", "redis"}:
            assert _command_target_exists(service["command"]), f"{name}: {service['command']}"
    for volume in ("media", "pgdata"):
        assert volume in compose["volumes"]


def test_procfile_runs_web_workers_and_beat():
    lines = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert set(lines) == {"web", "worker", "worker-gpu", "beat"}
    for name, command in lines.items():
        argv = shlex.split(command)
        if argv[0] == "celery":
            assert _command_target_exists(argv), name


def test_tasks_are_routed_by_module(settings):
    routes = settings.CELERY_TASK_ROUTES
    assert routes["scoring.tasks.*"]["queue"] == "gpu"
    assert routes["training.tasks.*"]["queue"] == "gpu"
    assert settings.CELERY_TASK_DEFAULT_QUEUE == "default"
