"""Load test: simulated annotators against the real server (gunicorn + PostgreSQL) on loopback.

Each annotator is a thread with its own API token that loops: fetch the next task, think, submit a
judgment (a fresh client_key; resent on a server error or dropped connection, as a real client does).
At the end the database is checked: every acknowledged judgment is stored exactly once, and nothing
unacknowledged slipped in twice.

    DATABASE_URL=postgres://loupe@127.0.0.1:54329/loupe_load python benchmarks/load_annotators.py \\
        --annotators 50 --duration 60 --think-ms 1000

Bounded: --duration seconds and --max-requests in all; the server listens on 127.0.0.1 only. The
database named in DATABASE_URL is created and migrated if needed; each run adds its own campaign and
users (names carry the run id), so runs never collide.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument(
        "--max-requests", type=int, default=50_000, help="stop after this many requests in all"
    )
    parser.add_argument(
        "--think-ms", type=float, default=1000.0, help="mean pause between seeing a task and submitting it"
    )
    parser.add_argument("--tasks", type=int, default=1500, help="tasks in the campaign (overlap 3)")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (gthread)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    return parser.parse_args(argv)


# --- setup (in this process, through the ORM) -------------------------------------------------------


def django_setup(database_url: str) -> None:
    from urllib.parse import urlparse

    host = urlparse(database_url).hostname
    if not database_url.startswith("postgres") or host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit("DATABASE_URL must be a PostgreSQL database on loopback (127.0.0.1).")
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    _database_create(database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    # One log line per request would cost the client more than the requests themselves.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _database_create(database_url: str) -> None:
    import psycopg

    base, name = database_url.rsplit("/", 1)
    with psycopg.connect(base.replace("postgres://", "postgresql://") + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def fixtures_create(*, run_id: str, annotators: int, tasks: int) -> tuple[int, list[tuple[str, str]]]:
    """A pool, a campaign with ``tasks`` tasks, and annotators with API tokens. Returns (campaign id,
    [(username, token)])."""
    from django.contrib.auth.models import Group, User

    from accounts.services import api_token_create
    from annotate.services import campaign_create, campaign_tasks_build
    from pool.models import Caption, Image, text_sha256

    source = f"load-{run_id}"
    images = Image.objects.bulk_create(
        [
            Image(
                sha256=uuid.uuid4().hex + uuid.uuid4().hex,
                width=640,
                height=480,
                format="JPEG",
                file=f"images/load/{run_id}-{i}.jpg",
                source=source,
            )
            for i in range(tasks)
        ],
        batch_size=1000,
    )
    captions = [
        Caption(image=image, text=text, text_sha256=text_sha256(text))
        for image in images
        for text in (f"{kind} caption {j} of image {image.pk}" for j, kind in enumerate("ABCD"))
    ]
    Caption.objects.bulk_create(captions, batch_size=2000)
    campaign = campaign_create(
        name=f"load {run_id}",
        overlap=3,
        captions_per_task=4,
        gold_rate=0.0,
        pool_filter={"image_sources": [source]},
    )
    campaign_tasks_build(campaign=campaign)
    group = Group.objects.get(name="annotator")
    users = []
    for i in range(annotators):
        user = User.objects.create_user(username=f"load-{run_id}-{i:03d}", password=None)
        user.groups.add(group)
        users.append((user.username, api_token_create(user=user, name="load test")[1]))
    return campaign.pk, users


# --- the server ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_start(
    *, database_url: str, workers: int, threads: int, log: Path
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        DATABASE_CONN_MAX_AGE="60",
        DJANGO_DEBUG="0",
        LOUPE_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi:application", "-b", f"127.0.0.1:{port}"]
        + ["-w", str(workers), "-k", "gthread", "--threads", str(threads), "--preload", "--timeout", "60"]
        + ["--keep-alive", "30"],
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited; see {log}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"gunicorn did not answer within 300 s; see {log}")


def gunicorn_stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# --- the annotators -------------------------------------------------------------------------------------


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"next-task": [], "judgment": []})
    errors: list[str] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # client_key -> judgment id
    requests: int = 0
    empty_queue: int = 0

    def take_request(self, budget: int) -> bool:
        with self.lock:
            if self.requests >= budget:
                return False
            self.requests += 1
            return True

    def record(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)


def answer(task: dict, rng: random.Random) -> tuple[list, dict]:
    ids = [c["id"] for c in task["captions"]]
    rng.shuffle(ids)
    ranking = [[ids[0]], ids[1:3], [ids[3]]] if len(ids) == 4 else [[cid] for cid in ids]
    ratings = {str(cid): {c["key"]: rng.randint(1, 5) for c in task["criteria"]} for cid in ids}
    return ranking, ratings


def annotator_loop(
    *,
    url: str,
    token: str,
    campaign_id: int,
    deadline: float,
    budget: int,
    think_ms: float,
    tally: Tally,
    seed: int,
) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while time.monotonic() < deadline:
            if not tally.take_request(budget):
                return
            started = time.perf_counter()
            try:
                response = client.post(f"/api/campaigns/{campaign_id}/next-task")
            except httpx.TransportError as exc:
                tally.errors.append(f"next-task: {type(exc).__name__}")
                continue
            tally.record("next-task", time.perf_counter() - started)
            if response.status_code == 204:
                with tally.lock:
                    tally.empty_queue += 1
                return
            if response.status_code != 200:
                tally.errors.append(f"next-task: HTTP {response.status_code} {response.text[:200]}")
                continue
            task = response.json()
            if think_ms:
                time.sleep(rng.uniform(0.5, 1.5) * think_ms / 1000)
            ranking, ratings = answer(task, rng)
            body = {
                "task_id": task["task_id"],
                "ranking": ranking,
                "ratings": ratings,
                "client_key": str(uuid.uuid4()),
                "duration_ms": int(think_ms),
            }
            for _attempt in range(5):  # a real client resends the same key until it gets an answer
                if not tally.take_request(budget + 1000):
                    return
                started = time.perf_counter()
                try:
                    response = client.post("/api/judgments", json=body)
                except httpx.TransportError as exc:
                    tally.errors.append(f"judgment: {type(exc).__name__}")
                    continue
                tally.record("judgment", time.perf_counter() - started)
                if response.status_code in (200, 201):
                    with tally.lock:
                        tally.acked[body["client_key"]] = response.json()["id"]
                    break
                tally.errors.append(f"judgment: HTTP {response.status_code} {response.text[:200]}")
                if response.status_code < 500:
                    break


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / ticks


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def server_pids(gunicorn_pid: int, database_url: str) -> list[int]:
    """The gunicorn master and workers, and the PostgreSQL backends serving them (when the cluster's
    postmaster is a local process we can see): the CPU the server side spends."""
    from django.db import connection

    pids = [gunicorn_pid, *_children(gunicorn_pid)]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        pids += [row[0] for row in cursor.fetchall()]
    return pids


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def verify(*, campaign_id: int, run_id: str, acked: dict[str, int]) -> dict:
    from django.db import connection
    from django.db.models import Count, Sum

    from annotate.models import Judgment, Task

    connection.close()
    stored = Judgment.objects.filter(task__campaign_id=campaign_id)
    by_key = dict(stored.values_list("client_key", "id"))
    by_key = {str(k): v for k, v in by_key.items()}
    doubled = stored.values("client_key").annotate(n=Count("id")).filter(n__gt=1).count()
    lost = [key for key in acked if key not in by_key]
    mismatched = [key for key, jid in acked.items() if key in by_key and by_key[key] != jid]
    unacked = [key for key in by_key if key not in acked]
    counter = (
        Task.objects.filter(campaign_id=campaign_id).aggregate(total=Sum("judgment_count"))["total"] or 0
    )
    per_user_task = stored.values("task_id", "user_id").annotate(n=Count("id")).filter(n__gt=1).count()
    return {
        "acknowledged": len(acked),
        "stored": len(by_key),
        "lost": len(lost),
        "doubled_keys": doubled,
        "doubled_user_task": per_user_task,
        "acked_id_mismatch": len(mismatched),
        "stored_unacknowledged": len(unacked),
        "task_counter_matches": counter == len(by_key),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    database_url = os.environ.get("DATABASE_URL", "")
    django_setup(database_url)
    run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
    t0 = time.perf_counter()
    campaign_id, users = fixtures_create(run_id=run_id, annotators=args.annotators, tasks=args.tasks)
    setup_s = time.perf_counter() - t0
    log = Path(os.environ.get("LOUPE_DATA_DIR", ROOT / "var")) / f"load-gunicorn-{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc, url = gunicorn_start(database_url=database_url, workers=args.workers, threads=args.threads, log=log)
    tally = Tally()
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        # Warm every worker's database connection, so the backends exist to be measured.
        with httpx.Client(base_url=url) as warm:
            for _ in range(args.workers * args.threads * 2):
                warm.get("/healthz")
        measured = server_pids(proc.pid, database_url)
        cpu_before = _cpu_seconds(measured)
        started = time.monotonic()
        deadline = started + args.duration
        threads = [
            threading.Thread(
                target=annotator_loop,
                kwargs=dict(
                    url=url,
                    token=token,
                    campaign_id=campaign_id,
                    deadline=deadline,
                    budget=args.max_requests,
                    think_ms=args.think_ms,
                    tally=tally,
                    seed=i,
                ),
            )
            for i, (_, token) in enumerate(users)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.duration + 120)
        elapsed = time.monotonic() - started
        measured = sorted(set(measured) | set(server_pids(proc.pid, database_url)))
        server_cpu = _cpu_seconds(measured) - cpu_before
    finally:
        gunicorn_stop(proc)
    every = tally.latencies["next-task"] + tally.latencies["judgment"]
    ms = lambda v: round(v * 1000, 1)  # noqa: E731
    report = {
        "config": vars(args) | {"json": str(args.json) if args.json else None},
        "setup_seconds": round(setup_s, 1),
        "elapsed_seconds": round(elapsed, 1),
        "requests": len(every),
        "throughput_rps": round(len(every) / elapsed, 1),
        "judgments_per_second": round(len(tally.acked) / elapsed, 1),
        "latency_ms": {
            kind: {
                "p50": ms(percentile(v, 0.5)),
                "p95": ms(percentile(v, 0.95)),
                "p99": ms(percentile(v, 0.99)),
                "mean": ms(statistics.fmean(v)) if v else None,
                "n": len(v),
            }
            for kind, v in (("all", every), *tally.latencies.items())
        },
        # CPU the server side (gunicorn + its PostgreSQL backends) spent per request: what bounds the
        # throughput of an otherwise idle machine (cores / this), whatever else shares it.
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, len(every)), 1),
        "errors": len(tally.errors),
        "error_samples": tally.errors[:10],
        "annotators_who_emptied_the_queue": tally.empty_queue,
        "verification": verify(campaign_id=campaign_id, run_id=run_id, acked=tally.acked),
        "cpu_count": os.cpu_count(),
        # The machine is shared: the load average says how much else ran during the measurement.
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return report


if __name__ == "__main__":
    result = main()
    check = result["verification"]
    ok = (
        result["errors"] == 0
        and check["lost"] == 0
        and check["doubled_keys"] == 0
        and check["doubled_user_task"] == 0
        and check["task_counter_matches"]
    )
    sys.exit(0 if ok else 1)
