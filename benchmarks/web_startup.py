"""What a web process pays to start: ``django.setup()`` plus loading the whole URLconf (what
``config/wsgi.py`` does before the first request), in fresh interpreters.

Reports the median wall time, the peak resident memory (ru_maxrss) and which ML modules got imported,
for this checkout and, in the same run, for a baseline revision checked out into a temporary git
worktree (default: the commit before the layout change of issue 11, when views reached torch).

    uv run python benchmarks/web_startup.py [--baseline-rev e2927aa] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, os, resource, sys, time
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
started = time.perf_counter()
import django
django.setup()
from django.urls import get_resolver
get_resolver().url_patterns
seconds = time.perf_counter() - started
heavy = [m for m in ("torch", "torchvision", "transformers", "open_clip") if m in sys.modules]
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "heavy": heavy}))
"""


def measure(checkout: Path, runs: int) -> dict:
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as data_dir:
            env = {**os.environ, "LOUPE_DATA_DIR": data_dir, "PYTHONPATH": str(checkout)}
            env.pop("DATABASE_URL", None)
            out = subprocess.run(
                [sys.executable, "-c", PROBE],
                cwd=checkout,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "seconds_median": round(statistics.median(r["seconds"] for r in results), 3),
        "seconds_min": round(min(r["seconds"] for r in results), 3),
        "rss_mb_median": round(statistics.median(r["rss_mb"] for r in results), 1),
        "heavy_modules": results[0]["heavy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-rev", default="e2927aa")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline), args.baseline_rev],
            check=True,
        )
        try:
            before = measure(baseline, args.runs)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False
            )
    after = measure(ROOT, args.runs)
    print("| checkout | URLconf load, median (min) | peak RSS | ML modules imported |")
    print("|---|---|---|---|")
    for name, r in ((f"baseline {args.baseline_rev}", before), ("this checkout", after)):
        print(
            f"| {name} | {r['seconds_median']} s ({r['seconds_min']} s) | {r['rss_mb_median']} MB | "
            f"{', '.join(r['heavy_modules']) or 'none'} |"
        )
    print(
        f"\nratio: {before['seconds_median'] / after['seconds_median']:.1f}x faster, "
        f"{before['rss_mb_median'] / after['rss_mb_median']:.1f}x less memory"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
