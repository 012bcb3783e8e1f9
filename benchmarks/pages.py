#!/usr/bin/env python
"""Benchmark: filter, preview, export, the pages and active-learning selection on a scale database.

Reads the pools that ``benchmarks/scale.py build`` (branch ``bulk``) writes, as its README says
(``/work/scale-run/README.txt``: ``--db-url`` is the pool's DATABASE_URL). It never rebuilds them; it runs
the product's own writes (filter runs, exports, next-task/submit, users for the roles).

Every figure is measured for this checkout and, with ``--baseline-repo DIR`` (a git worktree of the code
before the change), for that code on the same database in the same run: each measurement runs in a
fresh child process with that repository first on ``sys.path``, so its wall time and peak RSS
(``ru_maxrss`` from ``wait4``) are its own.

    python benchmarks/pages.py filter  --db-url postgres://.../scale_1m --baseline-repo /tmp/main-wt
    python benchmarks/pages.py pages   --db-url postgres://.../scale_1m --baseline-repo /tmp/main-wt
    python benchmarks/pages.py select  --db-url postgres://.../scale_1m

- ``filter``: the top-30% reward filter (the active reward model's scores), DataComp's CLIPScore
  threshold (cosine >= 0.28, the CLIPScore-only scores), the uid ``.npy`` export of the top-30% run,
  and the filter page's preview (counts + histogram) as a service call.
- ``pages``: logs in as each role with Django's test client and times ``--requests`` GETs of each page
  (pool browser and its next page, shards, review queue, audit, filter page and preview, a run's pairs,
  jobs, console) and the annotation next-task + submit round; p50/p95 in ms.
- ``select``: ``training.priorities`` choosing the next tasks from the whole pool; time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out" / "scale"


def _setup(repo: Path, db_url: str) -> None:
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    os.environ["DATABASE_URL"] = db_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def _scoring_key(version: int) -> dict:
    from scoring.models import ScoringRun

    run = (
        ScoringRun.objects.filter(reward_model_version=version, status="succeeded")
        .order_by("-finished_at", "-id")
        .first()
    )
    if run is None:
        raise SystemExit(f"No succeeded scoring run for reward model version {version} in this database.")
    return {"encoder": run.encoder, "reward_model_version": version}


# --- child measurements ------------------------------------------------------------------------------


def child_filter(rule: dict, version: int) -> dict:
    from curate.filtering import FilterRule, filter_run_create, filter_run_execute

    started = time.perf_counter()
    run = filter_run_create(**_scoring_key(version), rule=FilterRule.from_dict(rule), confirm=True)
    run = filter_run_execute(run=run)
    return {
        "seconds": time.perf_counter() - started,
        "run_id": run.pk,
        "considered": run.considered,
        "kept": run.kept,
        "kept_sha": _sha(run.kept_file),
        "summary": {k: v for k, v in run.summary.items() if k != "messages"},
    }


def _sha(path: str) -> str:
    import hashlib

    import numpy as np

    return hashlib.sha256(np.load(path).astype("<i8").tobytes()).hexdigest()[:16]


def child_export(run_id: int, out: str) -> dict:
    import hashlib
    import shutil

    from curate.exports import export_create, export_execute
    from curate.models import FilterRun

    run = FilterRun.objects.get(pk=run_id)
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    export = export_execute(export=export_create(kind="npy", filter_run=run, out=out, overwrite=True))
    seconds = time.perf_counter() - started
    digest = hashlib.sha256((Path(out) / "uids.npy").read_bytes()).hexdigest()[:16]
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "pairs": export.manifest["counts"]["pairs"], "uids_sha": digest}


def child_preview(rule: dict, version: int) -> dict:
    from curate.filtering import FilterRule, filter_preview

    rule_obj = FilterRule.from_dict(rule)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        preview = filter_preview(**_scoring_key(version), rule=rule_obj)
        times.append(time.perf_counter() - started)
    return {
        "seconds": statistics.median(times),
        "considered": preview.considered,
        "kept": preview.kept,
        "bins": len(preview.counts),
        "sampled": getattr(preview, "sample_note", "") or "",
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _bench_users() -> dict:
    from django.contrib.auth.models import Group, User

    from accounts.roles import ROLES

    users = {}
    for role in ROLES:
        user, _ = User.objects.get_or_create(username=f"bench-pages-{role}")
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        users[role] = user
    return users


PAGE_BUDGET_S = 60.0


def _next_page_url(client, url: str) -> str:
    """The page's own "next" link: ``after=<id>`` (keyset) or ``page=2`` (the code before it)."""
    import re

    html = client.get(url).content.decode()
    found = re.search(r"[?&](?:amp;)?(after=\d+|page=2)", html)
    return f"{url}?{found.group(1)}" if found else f"{url}?page=2"


def child_pages(requests: int) -> dict:
    """p50/p95 of each page through Django's test client (the whole view: middleware, queries, template)."""
    import uuid

    from django.test import Client
    from django.test.utils import setup_test_environment

    from annotate.models import Assignment, Campaign, TaskCaption
    from curate.models import FilterRun
    from pool.models import Image

    setup_test_environment()
    users = _bench_users()
    clients = {}
    for role, user in users.items():
        clients[role] = Client()
        clients[role].force_login(user)
    last_image = Image.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    run = FilterRun.objects.filter(status="succeeded").order_by("-pk").first()
    pages = [
        ("curator", "pool browser", "/pool/"),
        ("curator", "pool browser, next page", f"/pool/?after={max(last_image - 48 * 20, 1)}"),
        ("curator", "pool browser, status filter", "/pool/?status=rejected"),
        ("curator", "shards", "/pool/shards/"),
        ("curator", "review queue", "/curate/review/"),
        ("curator", "review queue, next page", _next_page_url(clients["curator"], "/curate/review/")),
        ("curator", "review audit", "/curate/review/audit"),
        ("curator", "filter page", "/curate/filters/"),
        ("curator", "filter preview (htmx)", "/curate/filters/preview?preset=datacomp-0.28"),
        ("admin", "jobs", "/console/jobs/"),
        ("admin", "console", "/console/"),
    ]
    if run is not None:
        pages.append(("curator", "filter run pairs", f"/curate/filters/runs/{run.pk}/"))
    results: dict = {}
    for role, name, url in pages:
        client = clients[role]
        headers = {"HTTP_HX_REQUEST": "true"} if "htmx" in name else {}
        times, statuses = [], set()
        page_started = time.perf_counter()
        for i in range(requests + 2):
            started = time.perf_counter()
            response = client.get(url, **headers)
            elapsed = time.perf_counter() - started
            statuses.add(response.status_code)
            if i >= 2:  # two warm-up requests
                times.append(elapsed)
            if len(times) >= 3 and time.perf_counter() - page_started > PAGE_BUDGET_S:
                break  # a page of several seconds: a few requests say enough
        results[name] = {
            "url": url,
            "n": len(times),
            "p50_ms": 1000 * statistics.median(times),
            "p95_ms": 1000 * _pct(times, 0.95),
            "status": sorted(statuses),
        }
        print(name, results[name], file=sys.stderr, flush=True)
    campaign = Campaign.objects.filter(name="scale").first() or Campaign.objects.order_by("pk").first()
    if campaign is not None:
        client, user = clients["annotator"], users["annotator"]
        nexts, submits, statuses = [], [], set()
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get(f"/annotate/{campaign.pk}/next")
            nexts.append(time.perf_counter() - started)
            statuses.add(response.status_code)
            assignment = Assignment.objects.filter(user=user, status="active").order_by("-pk").first()
            if assignment is None:
                break
            ids = list(
                TaskCaption.objects.filter(task_id=assignment.task_id)
                .order_by("position")
                .values_list("caption_id", flat=True)
            )
            post = {f"tier_{cid}": str(n + 1) for n, cid in enumerate(ids)}
            for cid in ids:
                for criterion in campaign.criteria:
                    post[f"rate_{cid}_{criterion['key']}"] = "3"
            post.update({"ranking_basis": "form", "client_key": str(uuid.uuid4()), "duration_ms": "5000"})
            started = time.perf_counter()
            response = client.post(f"/annotate/{campaign.pk}/tasks/{assignment.task_id}/submit", post)
            submits.append(time.perf_counter() - started)
            statuses.add(response.status_code)
        for name, times in (("annotation next-task", nexts), ("annotation submit", submits)):
            if times:
                results[name] = {
                    "p50_ms": 1000 * statistics.median(times),
                    "p95_ms": 1000 * _pct(times, 0.95),
                    "n": len(times),
                    "status": sorted(statuses),
                }
                print(name, results[name], file=sys.stderr, flush=True)
    return results


CHILDREN = {"filter": child_filter, "export": child_export, "preview": child_preview, "pages": child_pages}


def bench_pages(args) -> dict:
    repos = {"new": REPO}
    if args.baseline_repo:
        repos["baseline"] = Path(args.baseline_repo)
    return {
        label: _child(repo, args.db_url, "pages", requests=args.requests) for label, repo in repos.items()
    }


def _child(repo: Path, db_url: str, name: str, **kwargs) -> dict:
    """Run one measurement in a fresh process (it reports its own peak RSS)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", "--repo", str(repo), "--db-url", db_url]
    cmd += ["--name", name, "--kwargs", json.dumps(kwargs)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    out, _ = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": f"child {name} exited {proc.returncode}"}
    return json.loads(lines[-1][7:])


def _run_child(args) -> None:
    _setup(Path(args.repo), args.db_url)
    result = CHILDREN[args.name](**json.loads(args.kwargs))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result, default=str), flush=True)


# --- filter / export / preview --------------------------------------------------------------------

TOP30 = {"top_percent": 30}
DATACOMP = {"preset": "datacomp-0.28"}


def bench_filter(args) -> dict:
    repos = {"new": REPO}
    if args.baseline_repo:
        repos["baseline"] = Path(args.baseline_repo)
    results: dict = {}
    for label, repo in repos.items():
        r: dict = {}
        r["top30"] = _child(repo, args.db_url, "filter", rule=TOP30, version=args.reward_version)
        print(label, "top30", r["top30"], flush=True)
        r["datacomp"] = _child(repo, args.db_url, "filter", rule=DATACOMP, version=0)
        print(label, "datacomp", r["datacomp"], flush=True)
        if "run_id" in r["top30"]:
            out = str(Path(args.scratch) / f"pages-bench-npy-{label}")
            r["npy"] = _child(repo, args.db_url, "export", run_id=r["top30"]["run_id"], out=out)
            print(label, "npy", r["npy"], flush=True)
        if not args.skip_preview:
            r["preview_top30"] = _child(repo, args.db_url, "preview", rule=TOP30, version=args.reward_version)
            print(label, "preview", r["preview_top30"], flush=True)
        results[label] = r
    return results


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["filter", "pages", "select", "child"])
    parser.add_argument("--db-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--baseline-repo", default="", help="a worktree of the code before the change")
    parser.add_argument("--reward-version", type=int, default=1)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--scratch", default="/tmp")
    parser.add_argument("--skip-preview", action="store_true")
    parser.add_argument("--label", default="", help="names the output file, e.g. 1m or 10m")
    parser.add_argument("--repo", default=str(REPO), help=argparse.SUPPRESS)
    parser.add_argument("--name", default="", help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.command == "child":
        _run_child(args)
        return
    if not args.db_url.startswith(("postgres://", "postgresql://")):
        parser.error("pass --db-url postgres://... (the scale pool's DATABASE_URL)")
    started = time.time()
    load = os.getloadavg()
    if args.command == "filter":
        results = bench_filter(args)
    elif args.command == "pages":
        results = bench_pages(args)
    else:
        from benchmarks.pages_client import bench_select

        results = bench_select(args)
    record = {
        "command": args.command,
        "db": args.db_url.rsplit("/", 1)[-1],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "load_before": load,
        "load_after": os.getloadavg(),
        "results": results,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"pages-{args.command}-{args.label or record['db']}.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
