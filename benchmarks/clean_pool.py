#!/usr/bin/env python
"""Cleaning (``pool_clean``) at a million pairs and more: this checkout against a baseline commit.

Runs on a pool built by ``benchmarks/scale.py build`` (phashes set, so nothing is decoded: what is
measured is reading the pool's columns, the near-duplicate grouping and writing the marks). Each
measurement runs in its own process, inside one transaction that is rolled back at the end, so the
database is left exactly as it was and baseline and new code do the same work on the same rows. The
two must return the same summary (counts of every mark); the script fails otherwise.

    python benchmarks/clean_pool.py --database-url postgres://loupe@127.0.0.1:54350/scale_1m
    python benchmarks/clean_pool.py --database-url .../scale_10m --no-baseline

The baseline is the code before cleaning was made to scale (commit a8e5091), checked out into a
temporary git worktree. Results: benchmarks/out/clean_pool.json (one entry per database).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = "a8e5091"

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
import django
django.setup()
from django.db import connection, transaction
from pool.cleaning_runs import pool_clean

class Rollback(Exception):
    pass

result = {}
try:
    with transaction.atomic():
        t0, c0 = time.perf_counter(), time.process_time()
        run = pool_clean()
        result = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                  "summary": json.loads(json.dumps(run.summary, default=str))}
        raise Rollback
except Rollback:
    pass
with connection.cursor() as cursor:
    cursor.execute("SELECT count(*) FROM pool_image")
    result["images"] = cursor.fetchone()[0]
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
"""


def measure(checkout: Path, database_url: str) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOUPE_DATA_DIR": tempfile.mkdtemp(prefix="clean-bench-"),
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=checkout, env=env, check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--baseline", default=BASELINE, help="commit of the code to compare with")
    parser.add_argument("--no-baseline", action="store_true", help="measure this checkout only")
    args = parser.parse_args()

    results = {"load_before": os.getloadavg()}
    results["new"] = measure(REPO, args.database_url)
    print(f"new:      {results['new']['wall_s']:.1f} s wall, {results['new']['cpu_s']:.1f} s CPU", flush=True)
    if not args.no_baseline:
        with tempfile.TemporaryDirectory() as tmp:
            worktree = Path(tmp) / "baseline"
            subprocess.run(
                ["git", "worktree", "add", "-q", "--detach", str(worktree), args.baseline],
                cwd=REPO,
                check=True,
            )
            try:
                results["baseline"] = measure(worktree, args.database_url)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False)
        base, new = results["baseline"], results["new"]
        print(f"baseline: {base['wall_s']:.1f} s wall, {base['cpu_s']:.1f} s CPU", flush=True)
        if base["summary"] != new["summary"]:
            raise SystemExit(f"Different marks!\nbaseline {base['summary']}\nnew      {new['summary']}")
        results["speedup_wall"] = base["wall_s"] / new["wall_s"]
        results["speedup_cpu"] = base["cpu_s"] / new["cpu_s"]
        print(f"speed-up: {results['speedup_wall']:.1f}x wall, {results['speedup_cpu']:.1f}x CPU; same marks")
    results["load_after"] = os.getloadavg()
    out = REPO / "benchmarks" / "out" / "clean_pool.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous[f"{results['new']['images']} images"] = results
    out.write_text(json.dumps(previous, indent=2))


if __name__ == "__main__":
    main()
