#!/usr/bin/env python
"""Benchmark: filter N scored pairs and export them, streamed (``curate.exports``) against a naive export.

Builds a fresh PostgreSQL database with ``--pairs`` usable scored pairs (2 captions per image, one
Score row per caption with reward, cosine and four criteria) using ``INSERT ... SELECT generate_series``
inside PostgreSQL. Every image row points at the same small JPEG (96x80, ~2 KB): the export reads the
bytes per sample as a real one would, but the benchmark does not need N distinct files on disk.

Then, in the same run:

1. **Filter**: ``filter_run_execute`` with the top 30% by reward over all N pairs (SQL counts and the
   percentile cut, kept ids streamed into a .npy).
2. **Parquet export of all N pairs** (a top-100% run, so the target "1M pairs under 60 s" is measured on
   N pairs, not on the 30% kept), streamed: row groups per 10,000 pairs.
3. **WebDataset export** of the top-30% run, or of a ``--wds-pairs`` subset of it (a tar sample per pair
   with image bytes; the subset keeps the disk use and run time bounded on a shared machine).
4. **Naive exports** of the same pairs: ORM iteration (``select_related``, one model object per row),
   appending a dict per pair to a list, then ``pa.Table.from_pylist`` + ``write_table`` (Parquet) or a
   tar written from the list (WebDataset). The naive Parquet export runs on ``--naive-pairs`` pairs at
   most (0 = all N) because its memory and time grow with the pool.
5. The streamed Parquet export again on N/10 pairs, to show its peak memory does not grow with N.

Each export runs in a fresh child process (``--worker``) so its peak RSS (``ru_maxrss`` from
``wait4``) is its own; "idle" is a child that only sets Django up and imports the same modules.

    DATABASE_URL=postgres://loupe@127.0.0.1:54329/postgres python benchmarks/filter_export.py --pairs 1000000

The database ``--db-name`` is dropped and re-created; the output folder is removed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.pg import insert_select, recreate_database  # noqa: E402 - needs the repository on sys.path

ENCODER = "bench:encoder"
VERSION = 1


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def populate(*, pairs: int, media_root: Path) -> float:
    from django.db import connection
    from PIL import Image as PILImage

    from pool.models import Caption, Image
    from scoring.models import Score

    started = time.perf_counter()
    buffer = io.BytesIO()
    PILImage.effect_noise((96, 80), 64).convert("RGB").save(buffer, format="JPEG")
    (media_root / "bench").mkdir(parents=True, exist_ok=True)
    (media_root / "bench" / "one.jpg").write_bytes(buffer.getvalue())
    images = (pairs + 1) // 2
    insert_select(
        Image,
        {
            "id": "g",
            "sha256": "md5(g::text) || md5((g + 1)::text)",
            "phash": "substr(md5(g::text), 1, 16)",
            "width": "96",
            "height": "80",
            "format": "'JPEG'",
            "bytes": str(len(buffer.getvalue())),
            "file": "'bench/one.jpg'",
            "source": "'bench'",
            "status": "'ok'",
        },
        f"FROM generate_series(1, {images}) AS g",
    )
    insert_select(
        Caption,
        {
            "id": "g",
            "image_id": "(g - 1) / 2 + 1",
            "text": "'a photo number ' || g || ' of something seen from ' || mod(g, 7) || ' metres away'",
            "text_sha256": "md5('c' || g) || md5('d' || g)",
            "source": "'alt'",
            "status": "'ok'",
        },
        f"FROM generate_series(1, {pairs}) AS g",
    )
    insert_select(
        Score,
        {
            "caption_id": "g",
            "encoder": f"'{ENCODER}'",
            "reward_model_version": str(VERSION),
            "reward": "random() * 4 - 2",
            "cosine": "0.1 + random() * 0.25",
            "clipscore": "2.5 * (0.1 + random() * 0.25)",
            "criteria": (
                "json_build_object('accuracy', 1 + random() * 4, 'completeness', 1 + random() * 4, "
                "'vividness', 1 + random() * 4, 'context_relevance', 1 + random() * 4)::jsonb"
            ),
            "truncated": "false",
            "error": "''",
        },
        f"FROM generate_series(1, {pairs}) AS g",
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return time.perf_counter() - started


def _filter(top_percent: float) -> tuple[int, float, dict]:
    from curate.filtering import FilterRule, filter_run_create, filter_run_execute

    started = time.perf_counter()
    run = filter_run_create(
        encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=top_percent), confirm=True
    )
    run = filter_run_execute(run=run)
    return run.pk, time.perf_counter() - started, {"considered": run.considered, "kept": run.kept}


def _limit_run(run_id: int, limit: int) -> int:
    """A copy of a filter run that keeps only its first ``limit`` pairs (for subset exports)."""
    import numpy as np

    from curate.models import FilterRun

    run = FilterRun.objects.get(pk=run_id)
    ids = np.load(run.kept_file)[:limit]
    path = Path(run.kept_file).with_name(f"subset-{run_id}-{limit}.npy")
    np.save(path, ids)
    run.pk = None
    run.kept, run.kept_file = len(ids), str(path)
    run.save()
    return run.pk


# --- child processes ----------------------------------------------------------------------------


def worker(mode: str, run_id: int, out: str) -> dict:
    _setup_django()
    import numpy as np  # noqa: F401 - same imports in every mode, so "idle" is a fair baseline
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.exports import export_create, export_execute
    from curate.models import FilterRun

    run = FilterRun.objects.get(pk=run_id)
    started = time.perf_counter()
    pairs = 0
    if mode == "idle":
        pass
    elif mode in ("parquet", "webdataset"):
        export = export_execute(export=export_create(kind=mode, filter_run=run, out=out))
        pairs = export.manifest["counts"]["pairs"]
    elif mode in ("naive-parquet", "naive-webdataset"):
        pairs = _naive(run, out, pa, pq, webdataset=mode == "naive-webdataset")
    else:
        raise SystemExit(f"unknown mode {mode}")
    return {"seconds": time.perf_counter() - started, "pairs": pairs}


def _naive(run, out: str, pa, pq, *, webdataset: bool) -> int:
    """What a first version would do: ORM objects one at a time, a list of every row, then write."""
    import tarfile

    import numpy as np
    from django.conf import settings

    from scoring.models import Score

    kept = np.load(run.kept_file).tolist()
    rows = []
    scores = Score.objects.filter(
        encoder=run.encoder, reward_model_version=run.reward_model_version, caption_id__in=kept
    )
    for score in scores.select_related("caption__image").order_by("caption_id"):
        caption = score.caption
        rows.append(
            {
                "uid": caption.uid,
                "caption_id": caption.id,
                "image_path": str(settings.MEDIA_ROOT / caption.image.file),
                "caption": caption.text,
                "reward": score.reward,
                "clipscore": score.clipscore,
                "cosine": score.cosine,
                "criteria": json.dumps(score.criteria),
            }
        )
    os.makedirs(out, exist_ok=True)
    if not webdataset:
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(out, "pairs.parquet"))
        return len(rows)
    with tarfile.open(os.path.join(out, "00000.tar"), "w") as tar:
        for row in rows:
            for name, data in (
                (f"{row['uid']}.jpg", Path(row["image_path"]).read_bytes()),
                (f"{row['uid']}.txt", row["caption"].encode()),
                (f"{row['uid']}.json", json.dumps(row).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return len(rows)


def _child(mode: str, run_id: int, out: Path) -> dict:
    """Run one export in a fresh process; its own peak RSS comes from wait4."""
    result_file = out.with_suffix(".json")
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--worker",
            mode,
            "--run-id",
            str(run_id),
            "--out",
            str(out),
            "--result",
            str(result_file),
        ],
        env=os.environ.copy(),
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark child {mode} failed")
    result = json.loads(result_file.read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument(
        "--wds-pairs", type=int, default=100_000, help="WebDataset subset size (0 = all kept)"
    )
    parser.add_argument(
        "--naive-pairs", type=int, default=0, help="Cap for the naive Parquet export (0 = all)"
    )
    parser.add_argument(
        "--server-url", default=os.environ.get("DATABASE_URL", "postgres://loupe@127.0.0.1:54329/postgres")
    )
    parser.add_argument("--db-name", default="loupe_bench_filter_export")
    parser.add_argument("--json", default="", help="Also write the results to this file.")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args.worker, args.run_id, args.out)))
        return

    if not args.server_url.startswith("postgres"):
        parser.error("the benchmark needs PostgreSQL: pass --server-url postgres://... or set DATABASE_URL")
    scratch = Path(tempfile.mkdtemp(prefix="loupe-bench-export-"))
    os.environ["DATABASE_URL"] = recreate_database(args.server_url, args.db_name)
    os.environ["LOUPE_DATA_DIR"] = str(scratch / "data")
    os.environ["LOUPE_MEDIA_ROOT"] = str(scratch / "media")
    os.environ["LOUPE_EXPORT_DIR"] = str(scratch / "exports")
    os.environ.setdefault("LOUPE_LOG_LEVEL", "WARNING")
    _setup_django()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    n = args.pairs
    results: dict = {"pairs": n}
    try:
        results["populate_s"] = populate(pairs=n, media_root=Path(settings.MEDIA_ROOT))
        top30, results["filter_top30_s"], results["filter_top30"] = _filter(30)
        everything, results["filter_all_s"], _ = _filter(100)
        small = _limit_run(everything, max(1, n // 10))
        wds_run = _limit_run(top30, args.wds_pairs) if args.wds_pairs else top30
        naive_run = _limit_run(everything, args.naive_pairs) if args.naive_pairs else everything
        out = scratch / "out"
        out.mkdir()
        jobs = [
            ("idle", "idle", everything),
            ("parquet", "parquet", everything),
            ("parquet_tenth", "parquet", small),
            ("naive_parquet", "naive-parquet", naive_run),
            ("webdataset", "webdataset", wds_run),
            ("naive_webdataset", "naive-webdataset", wds_run),
        ]
        for name, mode, run_id in jobs:
            result = _child(mode, run_id, out / name)
            if result["pairs"]:
                result["pairs_per_s"] = result["pairs"] / result["seconds"]
            results[name] = result
            print(f"{name:18s} {json.dumps(result)}", flush=True)
            shutil.rmtree(out / name, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    idle = results["idle"]["peak_rss_mb"]
    print(f"\nPairs: {n:,} (populated in {results['populate_s']:.1f} s)")
    print(
        f"Filter top 30%: {results['filter_top30_s']:.2f} s "
        f"({results['filter_top30']['kept']:,} of {results['filter_top30']['considered']:,} kept)"
    )
    print(
        f"{'export':18s} {'pairs':>10s} {'seconds':>9s} {'pairs/s':>10s} {'peak RSS':>10s} {'over idle':>10s}"
    )
    for name in ("parquet", "parquet_tenth", "naive_parquet", "webdataset", "naive_webdataset"):
        r = results[name]
        print(
            f"{name:18s} {r['pairs']:>10,} {r['seconds']:>9.2f} {r.get('pairs_per_s', 0):>10,.0f} "
            f"{r['peak_rss_mb']:>8.0f}MB {r['peak_rss_mb'] - idle:>8.0f}MB"
        )
    print(f"idle child peak RSS: {idle:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
