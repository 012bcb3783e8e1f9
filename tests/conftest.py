"""Shared fixtures: users per role, small real images, and a real Celery worker process."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from PIL import Image as PILImage

from config.celery import app as celery_app

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    """Each test writes media, embeddings, models and exports into its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.EMBEDDING_CACHE_DIR = tmp_path / "embeddings"
    settings.EXPORT_DIR = tmp_path / "exports"
    settings.MODEL_DIR = tmp_path / "models"


@pytest.fixture(scope="session", autouse=True)
def _redis_broker_keys_removed():
    """On the Redis broker (LOUPE_TEST_BROKER=redis) the session's keys carry its own prefix: remove them
    at the end, so a shared Redis does not collect queues of finished test sessions."""
    yield
    prefix, url = os.environ.get("LOUPE_BROKER_KEY_PREFIX"), os.environ.get("CELERY_BROKER_URL", "")
    if prefix and url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


@pytest.fixture
def eager_celery():
    """Run tasks in-process for tests of code that enqueues; tests/system use a real worker instead."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield celery_app
    celery_app.conf.task_always_eager = previous


def make_user(username: str, role: str | None, password: str = "pw-for-tests") -> User:
    user = User.objects.create_user(username=username, password=password)
    if role:
        # get_or_create: transactional tests flush the tables, the groups the migration made included.
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


@pytest.fixture
def annotator(db):
    return make_user("anna", "annotator")


@pytest.fixture
def curator(db):
    return make_user("carl", "curator")


@pytest.fixture
def admin_user(db):
    return make_user("ada", "admin")


def image_bytes(width: int = 96, height: int = 80, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A small real image with structure (not a flat colour), so perceptual hashes differ by seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    img = PILImage.fromarray(base).resize((width, height), PILImage.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def make_image_bytes():
    return image_bytes


def _database_url_for_current_test_db() -> str:
    """The URL of the database the test runner is using right now (test_* on PostgreSQL)."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    return f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


class WorkerProcess:
    """A real ``celery worker`` subprocess on the same broker and test database as the test."""

    def __init__(self, queues: str = "default,gpu", extra_env: dict | None = None):
        self.queues = queues
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self) -> WorkerProcess:
        env = dict(os.environ)
        env["DATABASE_URL"] = _database_url_for_current_test_db()
        env.update(self.extra_env)
        data_dir = Path(env["LOUPE_DATA_DIR"])
        self.log_path = data_dir / f"worker-{time.time_ns()}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                self.queues,
                "-P",
                "solo",
                "-c",
                "1",
                "-l",
                "info",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=open(self.log_path, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


@pytest.fixture
def celery_worker_process():
    """Start workers with ``celery_worker_process()``; all are stopped at the end of the test."""
    workers: list[WorkerProcess] = []

    def start(**kwargs) -> WorkerProcess:
        worker = WorkerProcess(**kwargs).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run without root's powers: as root, under ``setpriv`` with every capability dropped, so
    folder permissions apply (root would write into a read-only folder anyway). Tests that need them
    skip only where neither is possible."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop capabilities")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", *argv]


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.25, message: str = "condition"):
    """Poll until ``predicate()`` is truthy; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


# --- Browser: Playwright driving Debian's Chromium (never `playwright install`) -----------------------
CHROMIUM = os.environ.get("LOUPE_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(os.environ.get("LOUPE_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))


@pytest.fixture(scope="session")
def browser():
    """One Chromium for the whole session (a second sync Playwright in the same thread is refused)."""
    from playwright.sync_api import sync_playwright

    import config.urls  # noqa: F401 - views (and torch) load now, not in the live server's first request

    # Playwright's sync API runs an event loop in this thread; the tests' ORM calls are still
    # synchronous and safe, so let Django allow them.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (scripts/system-deps.sh)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def browser_login(page, live_server):
    """Log a user in through the real login form: ``browser_login("anna", "pw-for-tests")``."""

    def login(username: str, password: str = "pw-for-tests"):
        page.goto(f"{live_server.url}/login/")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        return page

    return login
