"""Faults survived: PostgreSQL restarts during annotation, and a full or unwritable embedding cache.

The third fault of the issue, a Celery worker killed with SIGKILL in the middle of a scoring run, is
tests/system/test_worker_scoring.py (owned with the scoring code); docs/security.md lists all three.

The PostgreSQL test restarts the database server, so it runs only against the cluster that
``scripts/services.sh`` manages (``eval $(scripts/services.sh env)`` exports LOUPE_PG_DATA and
LOUPE_PG_BIN). Point it at a private cluster when other people share the default one:
``LOUPE_SERVICES_DIR=/tmp/mine LOUPE_PG_PORT=54339 scripts/services.sh start``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from django.conf import settings
from django.db import connection

from accounts.services import api_token_create
from annotate.models import Assignment, Judgment, Task
from tests.annotate.factories import answer_for, campaign_with_tasks
from tests.conftest import _database_url_for_current_test_db, make_user, unprivileged, wait_for

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parents[2]


# --- PostgreSQL restart during annotation ------------------------------------------------------------


def _managed_cluster() -> Path:
    """The data folder of the services.sh cluster the test database lives on, or skip saying why."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL): the fault is a database server restart")
    data, pg_bin = os.environ.get("LOUPE_PG_DATA"), os.environ.get("LOUPE_PG_BIN")
    if not data or not pg_bin:
        pytest.skip(
            "LOUPE_PG_DATA/LOUPE_PG_BIN unset: run `eval $(scripts/services.sh env)` so the test may restart it"
        )
    pid_file = Path(data) / "postmaster.pid"
    if not pid_file.exists():
        pytest.skip(f"no PostgreSQL runs from {data} (no postmaster.pid)")
    lines = pid_file.read_text().splitlines()
    port = lines[3].strip() if len(lines) > 3 else ""
    if str(connection.settings_dict["PORT"]) != port:
        pytest.skip(
            f"the test database is on port {connection.settings_dict['PORT']}, but the cluster in {data} "
            f"listens on {port}: the test only restarts a server that scripts/services.sh manages"
        )
    return Path(data)


def _restart_postgres(data: Path) -> None:
    env = dict(
        os.environ, LOUPE_SERVICES_DIR=str(data.parent), LOUPE_PG_PORT=str(connection.settings_dict["PORT"])
    )
    subprocess.run(
        [str(ROOT / "scripts" / "services.sh"), "restart-postgres"], env=env, check=True, timeout=120
    )
    connection.close()  # this process's connection died with the server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """The real web server on loopback, on the test database, as production runs it."""

    def __init__(self, *, workers: int = 2, conn_max_age: int = 60):
        self.port = _free_port()
        env = dict(os.environ)
        env.update(
            DATABASE_URL=_database_url_for_current_test_db(),
            # Persistent connections are what a restart breaks: each worker holds one when it happens.
            DATABASE_CONN_MAX_AGE=str(conn_max_age),
            LOUPE_MEDIA_ROOT=str(settings.MEDIA_ROOT),
        )
        self.log = Path(env["LOUPE_DATA_DIR"]) / f"gunicorn-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi:application", "-b", f"127.0.0.1:{self.port}"]
            # --preload imports the app (torch included) once, before forking the workers.
            + ["-w", str(workers), "--preload", "--timeout", "60", "--access-logfile", "-"],
            cwd=ROOT,
            env=env,
            stdout=open(self.log, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> Gunicorn:
        wait_for(self._healthy, timeout=240, message=f"gunicorn on {self.url} ({self.log})")
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited: {self.log.read_text(errors='replace')[-2000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def gunicorn():
    servers: list[Gunicorn] = []

    def start(**kwargs) -> Gunicorn:
        servers.append(Gunicorn(**kwargs))
        return servers[-1].wait_ready()

    yield start
    for server in servers:
        server.stop()


def submit_with_retries(
    client: httpx.Client, body: dict, *, attempts: int = 20
) -> tuple[httpx.Response, int]:
    """What a well-behaved client does: resend the same body (same client_key) until it gets an answer
    that is not a server error or a dropped connection. Returns the answer and how many tries it took."""
    for attempt in range(1, attempts + 1):
        try:
            response = client.post("/api/judgments", json=body)
            if response.status_code < 500:
                return response, attempt
        except httpx.TransportError:
            pass
        time.sleep(min(0.2 * attempt, 2.0))
    raise AssertionError(f"no answer after {attempts} tries")


@pytest.fixture
def annotation_setup(db):
    from django.contrib.auth.models import Group

    # A transactional test before this one flushed the tables, the role groups of the migration too.
    for role in ("annotator", "curator", "admin"):
        Group.objects.get_or_create(name=role)
    campaign = campaign_with_tasks(name="faults", images=3, captions_per_image=3, overlap=1)
    user = make_user("fault-annotator", "annotator")
    _, raw = api_token_create(user=user)
    return campaign, user, raw


def _next_task(client: httpx.Client, campaign) -> dict:
    response = client.post(f"/api/campaigns/{campaign.pk}/next-task")
    assert response.status_code == 200, response.text
    return response.json()


def _body(task: dict, key: uuid.UUID) -> dict:
    ranking, ratings = answer_for(Task.objects.get(pk=task["task_id"]))
    return {"task_id": task["task_id"], "ranking": ranking, "ratings": ratings, "client_key": str(key)}


def _assert_stored_once(key: uuid.UUID, task_id: int) -> None:
    connection.close()
    assert Judgment.objects.filter(client_key=key).count() == 1
    assert Task.objects.get(pk=task_id).judgment_count == 1
    assert Assignment.objects.get(task_id=task_id).status == "submitted"


@pytest.mark.django_db(transaction=True)
def test_restart_between_submit_and_retry_stores_one_judgment(annotation_setup, gunicorn):
    """The answer to a submit is lost, the database restarts, the client resends: one judgment."""
    data = _managed_cluster()
    campaign, _, raw = annotation_setup
    server = gunicorn()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {raw}"}, timeout=30)
    task = _next_task(client, campaign)
    key = uuid.uuid4()
    body = _body(task, key)
    first, _ = submit_with_retries(client, body)
    assert first.status_code == 201, first.text
    _restart_postgres(data)
    # Both workers hold connections from before the restart; the retry must still land on one judgment.
    again, tries = submit_with_retries(client, body)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    _assert_stored_once(key, task["task_id"])


@pytest.mark.django_db(transaction=True)
def test_restart_during_submit_then_retry_stores_one_judgment(annotation_setup, gunicorn):
    """The database restarts while the submit is inside its transaction: the request fails, nothing is
    half-written, and the client's retry with the same key stores the judgment exactly once."""
    data = _managed_cluster()
    campaign, _, raw = annotation_setup
    server = gunicorn()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {raw}"}, timeout=30)
    task = _next_task(client, campaign)
    key = uuid.uuid4()
    body = _body(task, key)
    assignment_id = task["assignment_id"]

    # Hold the assignment's row lock so the submit waits inside its transaction, then restart.
    url = _database_url_for_current_test_db().replace("postgres://", "postgresql://")
    blocker = psycopg.connect(url)
    watcher = psycopg.connect(url, autocommit=True)  # its own snapshot of pg_stat_activity per query
    outcome: dict = {}

    def first_try():
        try:
            outcome["response"] = client.post("/api/judgments", json=body)
        except httpx.TransportError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=first_try)
    try:
        blocker.execute("SELECT id FROM annotate_assignment WHERE id = %s FOR UPDATE", [assignment_id])
        thread.start()

        def submit_is_waiting() -> bool:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE %s",
                ["%annotate_assignment%"],
            ).fetchone()
            return row[0] > 0

        wait_for(submit_is_waiting, timeout=60, message="the submit to wait on the assignment lock")
        _restart_postgres(data)
        thread.join(timeout=60)
    finally:
        for conn in (blocker, watcher):
            try:
                conn.close()
            except psycopg.Error:
                pass
    failed = outcome.get("error") or outcome["response"]
    assert isinstance(failed, Exception) or failed.status_code >= 500, failed.text
    connection.close()
    assert not Judgment.objects.filter(client_key=key).exists()  # nothing half-written

    stored, tries = submit_with_retries(client, body)
    assert stored.status_code == 201, stored.text
    replay, _ = submit_with_retries(client, body)
    assert replay.status_code == 200 and replay.json()["id"] == stored.json()["id"]
    _assert_stored_once(key, task["task_id"])


# --- embedding cache: full disk, read-only folder ------------------------------------------------

CACHE_WRITER = """
import resource, signal, sys
import numpy as np
from scoring.cache import CacheError, EmbeddingCache

# Past the file-size limit a write fails with EFBIG instead of killing the process (SIGXFSZ).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
cache = EmbeddingCache("tiny-encoder", root=sys.argv[1])
keys = [f"{i:064x}" for i in range(int(sys.argv[3]))]
try:
    cache.put_images(keys, np.ones((len(keys), 512), dtype=np.float32))
except CacheError as exc:
    print("CacheError:", exc)
    sys.exit(3)
print("stored")
"""


def _write_cache(
    root: Path, *, limit: int, rows: int, privileged: bool = True
) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", CACHE_WRITER, str(root), str(limit), str(rows)]
    return subprocess.run(
        argv if privileged else unprivileged(argv),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_full_cache_disk_is_a_clear_error_and_leaves_no_partial_files(tmp_path):
    root = tmp_path / "cache"
    # 100 rows of 512 float16 = 100 kB; the limit lets a few kB through, then the write fails midway.
    result = _write_cache(root, limit=20_000, rows=100)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Cannot write the embedding cache" in result.stdout
    assert "disk is not full" in result.stdout and str(root) in result.stdout
    leftovers = _cache_files(root)
    assert not [p for p in leftovers if p.name.startswith(".tmp-")], leftovers
    assert not [p for p in leftovers if p.name.endswith(".keys.npy")], leftovers


def test_cache_fills_then_recovers_when_space_returns(tmp_path):
    """The failed shard is invisible; once there is room again, the same rows are stored and read back."""
    root = tmp_path / "cache"
    assert _write_cache(root, limit=20_000, rows=100).returncode == 3
    assert _write_cache(root, limit=10_000_000, rows=100).returncode == 0
    from scoring.cache import EmbeddingCache

    values, found = EmbeddingCache("tiny-encoder", root=root).get_images([f"{i:064x}" for i in range(100)])
    assert found.all() and values.shape == (100, 512) and np.all(values == 1)


def test_small_write_that_fits_the_quota_succeeds(tmp_path):
    assert _write_cache(tmp_path / "cache", limit=1_000_000, rows=10).returncode == 0


def test_read_only_cache_folder_is_a_clear_error(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o555)
    try:
        # Without root's capabilities (CI runs as root), so the folder's permissions apply.
        result = _write_cache(root, limit=10_000_000, rows=10, privileged=False)
    finally:
        root.chmod(0o755)
    assert result.returncode == 3 and "Cannot write the embedding cache" in result.stdout
    assert _cache_files(root) == []
