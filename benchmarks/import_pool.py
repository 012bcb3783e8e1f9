"""Benchmark: batched streaming ``pool_import`` against a naive one-row-at-a-time ORM import.

    python benchmarks/import_pool.py [--pairs 100000] [--captions-per-image 5] [--naive-pairs 2000]

Generates (once, cached under benchmarks/out/) a Parquet table of image-caption pairs pointing at small
64x64 JPEGs, then, in a scratch database created and dropped by this script (``test_<name>`` of
whatever DATABASE_URL says; PostgreSQL recommended), measures:

* ``pool_import`` at two pool sizes (a tenth of the pairs, then all of them) on an empty pool;
* a naive importer on the first ``--naive-pairs`` rows: for each row, read and validate the image
  exactly as the import does, then ``Image.objects.get_or_create`` and ``Caption.objects.get_or_create``
  in autocommit mode. It is run on a subset because it is slow; its rate is per pair, so the full-size
  time is extrapolated (and said so).

Each measurement runs in its own child process so its peak RSS (``ru_maxrss``) is its own. Prints a
markdown snippet to stdout.

Since pools are indexed in place, ``pool_import`` no longer decodes or copies images (it records the
paths and hashes the bytes); the naive importer still decodes and stores every image, so the two do
different work. ``benchmarks/index_pool.py`` compares indexing in place with the copying import it
replaced, on img2dataset-style shards.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out"
WORDS = [
    "a",
    "the",
    "dog",
    "cat",
    "bird",
    "tree",
    "red",
    "blue",
    "green",
    "small",
    "large",
    "old",
    "young",
    "man",
    "woman",
    "child",
    "car",
    "bicycle",
    "street",
    "beach",
    "mountain",
    "river",
    "sky",
    "cloud",
    "house",
    "window",
    "door",
    "table",
    "chair",
    "bowl",
    "of",
    "fruit",
    "on",
    "in",
    "near",
    "with",
    "under",
    "running",
    "sitting",
    "standing",
    "flying",
    "sleeping",
    "playing",
    "photo",
    "picture",
    "view",
    "close-up",
]


def django_setup() -> None:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


# --- data -------------------------------------------------------------------------------------------


def dataset_build(*, pairs: int, captions_per_image: int, seed: int = 0) -> Path:
    """A folder of JPEGs plus ``pairs-<n>.parquet``; reused when it already exists."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    images = max(1, pairs // captions_per_image)
    folder = OUT / f"data-{images}img"
    table = folder / f"pairs-{pairs}x{captions_per_image}.parquet"
    if table.exists():
        return table
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for i in range(images):
        path = folder / "images" / f"{i // 1000:03d}" / f"{i:07d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        base = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(base).resize((64, 64), Image.BILINEAR).save(buffer, format="JPEG", quality=85)
        path.write_bytes(buffer.getvalue())
    text_rng = random.Random(seed)
    paths, captions = [], []
    for row in range(pairs):
        i = row // captions_per_image
        paths.append(f"images/{i // 1000:03d}/{i:07d}.jpg")
        captions.append(" ".join(text_rng.choices(WORDS, k=text_rng.randint(4, 14))))
    pq.write_table(pa.table({"image": paths, "caption": captions}), table, row_group_size=10_000)
    print(
        f"generated {images} images and {pairs} pairs in {time.perf_counter() - started:.0f}s",
        file=sys.stderr,
    )
    return table


def table_head(table: Path, rows: int) -> Path:
    """The first ``rows`` rows as their own Parquet file next to the full one."""
    import pyarrow.parquet as pq

    target = table.with_name(f"{table.stem}-head{rows}.parquet")
    if not target.exists():
        pq.write_table(pq.read_table(table).slice(0, rows), target, row_group_size=10_000)
    return target


# --- child: one measurement ----------------------------------------------------------------------


def rss_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return rss_mib()


def warm_up() -> None:
    """Load what both importers load lazily (imagehash, scipy, the DB connection) before timing."""
    from pool.images import image_inspect
    from pool.models import Image

    buffer = io.BytesIO()
    from PIL import Image as PILImage

    PILImage.new("RGB", (64, 64), "red").save(buffer, format="JPEG")
    image_inspect(buffer.getvalue())
    Image.objects.exists()


def pool_empty() -> None:
    from django.db import connection

    from pool.models import Caption, Image

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"TRUNCATE {Caption._meta.db_table}, {Image._meta.db_table} RESTART IDENTITY CASCADE"
            )
    else:
        Caption.objects.all().delete()
        Image.objects.all().delete()


def measure_fast(table: Path) -> dict:
    from pool.importing import pool_import
    from pool.models import Caption

    pool_empty()
    warm_up()
    baseline = rss_now_mib()
    started = time.perf_counter()
    run = pool_import(source=str(table), batch_size=1000)
    seconds = time.perf_counter() - started
    return {
        "pairs": run.summary["captions_imported"],
        "images": run.summary["images_imported"],
        "seconds": seconds,
        "rss_baseline_mib": baseline,
        "rss_peak_mib": rss_mib(),
        "captions_in_db": Caption.objects.count(),
    }


def measure_naive(table: Path, rows: int) -> dict:
    """One row at a time through the ORM, the way a first importer is usually written."""
    import pyarrow.parquet as pq

    from pool.images import image_inspect, image_store
    from pool.models import Caption, Image, text_sha256

    pool_empty()
    warm_up()
    baseline = rss_now_mib()
    started = time.perf_counter()
    done = 0
    for batch in pq.ParquetFile(table).iter_batches(batch_size=1000):
        for row in batch.to_pylist():
            if done >= rows:
                break
            data = (table.parent / row["image"]).read_bytes()
            info = image_inspect(data)
            image, _ = Image.objects.get_or_create(
                sha256=info.sha256,
                defaults={
                    "phash": info.phash,
                    "width": info.width,
                    "height": info.height,
                    "format": info.format,
                    "bytes": info.size,
                    "file": image_store(data=data, info=info),
                    "source": str(table),
                    "source_key": row["image"],
                },
            )
            text = row["caption"].strip()
            Caption.objects.get_or_create(image=image, text_sha256=text_sha256(text), defaults={"text": text})
            done += 1
        if done >= rows:
            break
    seconds = time.perf_counter() - started
    return {
        "pairs": Caption.objects.count(),
        "images": Image.objects.count(),
        "seconds": seconds,
        "rss_baseline_mib": baseline,
        "rss_peak_mib": rss_mib(),
    }


def child_main(args) -> None:
    django_setup()
    from django.conf import settings

    settings.MEDIA_ROOT = Path(args.media)
    table = Path(args.table)
    result = measure_naive(table, args.naive_pairs) if args.phase == "naive" else measure_fast(table)
    print(json.dumps(result))


# --- parent -------------------------------------------------------------------------------------------


def child_run(phase: str, table: Path, *, env: dict, media: Path, naive_pairs: int = 0) -> dict:
    shutil.rmtree(media, ignore_errors=True)
    command = [sys.executable, __file__, "--child", phase, "--table", str(table), "--media", str(media)]
    if naive_pairs:
        command += ["--naive-pairs", str(naive_pairs)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(output.stdout.strip().splitlines()[-1])


def scratch_database():
    """Create ``test_<db>`` (what the test runner would use) and return its URL and a drop function."""
    django_setup()
    from django.db import connection

    original = connection.settings_dict["NAME"]
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        url = f"sqlite:///{name}"
    else:
        url = f"postgres://{s['USER']}:{s['PASSWORD'] or ''}@{s['HOST']}:{s['PORT']}/{name}"

    def drop() -> None:
        connection.creation.destroy_test_db(original, verbosity=0)

    return url, drop, connection.vendor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--naive-pairs", type=int, default=2000)
    parser.add_argument("--child", choices=["fast", "naive"], dest="phase", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--media", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        child_main(args)
        return

    OUT.mkdir(parents=True, exist_ok=True)
    table = dataset_build(pairs=args.pairs, captions_per_image=args.captions_per_image)
    small_pairs = max(args.pairs // 10, 1)
    small = table_head(table, small_pairs)
    naive_pairs = min(args.naive_pairs, args.pairs)
    # Every importer then reads from the page cache: the figures measure import work, not the disk.
    for image in sorted((table.parent / "images").rglob("*.jpg")):
        image.read_bytes()
    url, drop, vendor = scratch_database()
    env = dict(os.environ, DATABASE_URL=url, LOUPE_LOG_LEVEL="WARNING")
    media = OUT / "media-scratch"
    try:
        fast_small = child_run("fast", small, env=env, media=media)
        fast_full = child_run("fast", table, env=env, media=media)
        naive = child_run("naive", table, env=env, media=media, naive_pairs=naive_pairs)
    finally:
        shutil.rmtree(media, ignore_errors=True)
        drop()

    def rate(result: dict) -> float:
        return result["pairs"] / result["seconds"]

    ratio = rate(fast_full) / rate(naive)
    naive_full_minutes = args.pairs / rate(naive) / 60
    cpu = os.cpu_count()
    load = os.getloadavg()[0]
    print(
        f"""### Pool import ({vendor}, {cpu} cores, load average {load:.1f} at the end)

Generated Parquet table: {args.pairs:,} pairs over {args.pairs // args.captions_per_image:,} JPEGs of 64x64 \
({args.captions_per_image} caption(s) per image{", like COCO" if args.captions_per_image == 5 else ""}). `pool_import` \
indexes them in place (sha256 and header, no decode, no copy); the naive importer decodes, hashes (sha256 + pHash) \
and stores every image; the files are read once beforehand so both read from the page cache.

| importer | pairs | images | time | pairs/s | peak RSS | peak RSS minus RSS before the import |
|---|---:|---:|---:|---:|---:|---:|
| `pool_import` (batches of 1000) | {fast_small["pairs"]:,} | {fast_small["images"]:,} | {fast_small["seconds"]:.1f} s | {rate(fast_small):,.0f} | {fast_small["rss_peak_mib"]:.0f} MiB | {fast_small["rss_peak_mib"] - fast_small["rss_baseline_mib"]:.0f} MiB |
| `pool_import` (batches of 1000) | {fast_full["pairs"]:,} | {fast_full["images"]:,} | {fast_full["seconds"]:.1f} s | {rate(fast_full):,.0f} | {fast_full["rss_peak_mib"]:.0f} MiB | {fast_full["rss_peak_mib"] - fast_full["rss_baseline_mib"]:.0f} MiB |
| naive, one row at a time (first {naive["pairs"]:,} pairs) | {naive["pairs"]:,} | {naive["images"]:,} | {naive["seconds"]:.1f} s | {rate(naive):,.0f} | {naive["rss_peak_mib"]:.0f} MiB | {naive["rss_peak_mib"] - naive["rss_baseline_mib"]:.0f} MiB |

- Speed-up of `pool_import` over the naive import: **{ratio:.1f}x** (pairs/s at {args.pairs:,} pairs vs the naive \
rate on its {naive["pairs"]:,}-pair subset; the naive rate is per row and does not improve with size, so a full naive \
run would take about {naive_full_minutes:.0f} min — extrapolated, not measured).
- Peak memory at {small_pairs:,} and {args.pairs:,} pairs: {fast_small["rss_peak_mib"]:.0f} MiB and \
{fast_full["rss_peak_mib"]:.0f} MiB (each in a fresh process; RSS of the loaded Django process before importing: about \
{fast_full["rss_baseline_mib"]:.0f} MiB).
"""
    )


if __name__ == "__main__":
    main()
