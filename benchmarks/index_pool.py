"""Benchmark: indexing an img2dataset-style pool in place against the copying import it replaces.

    DATABASE_URL=postgres://... python benchmarks/index_pool.py [--pairs 1000000] [--subset 20000]

Generates (once, cached under benchmarks/out/index_pool/) a pool as img2dataset writes it: WebDataset
shards of 10,000 samples (``key.jpg``, ``key.txt``, ``key.json``) with a Parquet of metadata beside each
(uid, key, url, caption, status, sizes, sha256, an extra column). Every image is a distinct file made
cheaply: one JPEG (``--image-size``, default 64 px; img2dataset's default is 256) with a counter in a
comment segment (distinct bytes and sha256, same picture).

Then, each in its own child process (so its peak RSS, ``ru_maxrss``, is its own) and on a fresh
PostgreSQL database (recreated by this script; point DATABASE_URL at a database you can drop):

* ``in_place_subset``: ``pool_import`` of the first ``--subset`` pairs' shards;
* ``copying_subset``: the copying import as it was before indexing in place (``pool/readers.py`` and
  ``pool/services.py`` at the commit the in-place work started from, read with ``git show``): every
  image decoded, hashed and copied into MEDIA_ROOT, on the same shards;
* ``in_place_full``: ``pool_import`` of the whole pool;
* ``reimport_full``: the same import again (every shard unchanged: fingerprints only).

Prints a markdown table and writes benchmarks/out/index_pool.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out" / "index_pool"
SHARD_SIZE = 10_000
# The commit the in-place work branched from: its pool import is the copying one measured here.
COPYING_COMMIT = "f397504"

sys.path.insert(0, str(REPO))
from benchmarks.import_pool import WORDS, django_setup  # noqa: E402 - needs the repository on sys.path

# --- data -------------------------------------------------------------------------------------------


def base_jpeg(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)).resize((size, size)).save(
        buffer, format="JPEG", quality=85
    )
    return buffer.getvalue()


def distinct_jpeg(base: bytes, n: int) -> bytes:
    """The same picture with a COM segment holding ``n``: distinct bytes for the cost of a concatenation."""
    comment = f"loupe-benchmark-{n:012d}".encode()
    return base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def shards_write(
    folder: Path,
    pairs: int,
    *,
    shard_size: int,
    image_size: int,
    image,
    words=WORDS,
    progress_every: int = 10,
) -> None:
    """img2dataset's WebDataset layout in ``folder``: per shard a tar of ``<key>.jpg/.txt/.json`` and
    its parquet; ``image(i)`` gives sample i's JPEG bytes. Shards already written are kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    shards = (pairs + shard_size - 1) // shard_size
    for shard in range(shards):
        tar_path, parquet_path = folder / f"{shard:05d}.tar", folder / f"{shard:05d}.parquet"
        if tar_path.exists() and parquet_path.exists():
            continue
        rows = []
        tmp = tar_path.with_suffix(".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(shard * shard_size, min(pairs, (shard + 1) * shard_size)):
                key = f"{i:09d}"
                data = image(i)
                caption = " ".join(words[(i * k) % len(words)] for k in range(3, 3 + 4 + i % 9))
                row = {
                    "uid": hashlib.md5(key.encode()).hexdigest(),
                    "key": key,
                    "url": f"https://images.example.com/{i % 997}/{key}.jpg",
                    "caption": caption,
                    "status": "success",
                    "error_message": None,
                    "width": image_size,
                    "height": image_size,
                    "original_width": 2 * image_size,
                    "original_height": 2 * image_size,
                    "exif": "{}",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "aesthetic": round((i % 100) / 10, 1),
                }
                rows.append(row)
                _member(tar, f"{key}.jpg", data)
                _member(tar, f"{key}.txt", caption.encode())
                _member(tar, f"{key}.json", json.dumps(row).encode())
        os.replace(tmp, tar_path)
        pq.write_table(pa.Table.from_pylist(rows), parquet_path)
        if shard % progress_every == progress_every - 1:
            print(f"  generated {shard + 1}/{shards} shards", file=sys.stderr, flush=True)


def pool_build(pairs: int, image_size: int = 64) -> Path:
    """``pairs`` samples in shards of SHARD_SIZE, reused when they exist."""
    folder = OUT / ("pool" if image_size == 64 else f"pool-{image_size}px")
    base = base_jpeg(image_size)
    started = time.perf_counter()
    shards_write(
        folder, pairs, shard_size=SHARD_SIZE, image_size=image_size, image=lambda i: distinct_jpeg(base, i)
    )
    if time.perf_counter() - started > 1:
        print(f"generated {pairs} pairs in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return folder


def subset_folder(pool: Path, pairs: int) -> Path:
    """The first shards holding ``pairs`` samples, linked into their own folder."""
    folder = OUT / f"subset-{pairs}" if pool.name == "pool" else OUT / f"subset-{pairs}-{pool.name}"
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range((pairs + SHARD_SIZE - 1) // SHARD_SIZE):
        for suffix in (".tar", ".parquet"):
            link = folder / f"{shard:05d}{suffix}"
            if not link.exists():
                link.symlink_to(pool / f"{shard:05d}{suffix}")
    return folder


# --- child: one measurement ----------------------------------------------------------------------


def rss_peak_mib() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries that over exec, so a child
    would report its parent's peak when the parent was larger."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copying_import_module():
    """The copying import at COPYING_COMMIT, loaded from git as modules ``legacy_readers`` and
    ``legacy_services`` (their ``pool.readers`` import pointed at the former)."""

    def load(name: str, path: str, replace: tuple[str, str] | None = None) -> types.ModuleType:
        source = subprocess.run(
            ["git", "show", f"{COPYING_COMMIT}:{path}"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout
        if replace:
            source = source.replace(*replace)
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(compile(source, f"{COPYING_COMMIT}:{path}", "exec"), module.__dict__)  # noqa: S102
        return module

    load("legacy_readers", "pool/readers.py")
    return load(
        "legacy_services", "pool/services.py", ("from pool.readers import", "from legacy_readers import")
    )


def measure(phase: str, source: str) -> dict:
    from django.db import connection

    from pool.models import Caption, Image

    connection.ensure_connection()
    if phase == "copying":
        legacy = copying_import_module()
        started = time.perf_counter()
        run = legacy.pool_import(source=source, batch_size=500)
    else:
        from pool.importing import pool_import

        started = time.perf_counter()
        run = pool_import(source=source, processes=int(os.environ.get("BENCH_PROCESSES", "1")))
    seconds = time.perf_counter() - started
    return {
        "status": run.status,
        "captions_imported": run.summary.get("captions_imported"),
        "already_present": run.summary.get("already_present"),
        "shards": run.summary.get("shards"),
        "skipped": run.summary.get("skipped_total"),
        "seconds": round(seconds, 2),
        "rss_peak_mib": round(rss_peak_mib(), 1),
        # Shards indexed in worker processes (forked, no exec): the largest one's peak. For the copying
        # import there are none and this is the `git show` that loaded its code.
        "rss_workers_peak_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "captions_in_db": Caption.objects.count(),
        "images_in_db": Image.objects.count(),
        "media_files": sum(len(files) for _, _, files in os.walk(os.environ["LOUPE_MEDIA_ROOT"])),
    }


def child_main(args) -> None:
    django_setup()
    print(json.dumps(measure(args.child, args.source)))


# --- parent -------------------------------------------------------------------------------------------


def database_fresh(url: str) -> None:
    """Recreate the database of ``url`` and migrate it."""
    from benchmarks.pg import recreate_database

    server, name = url.rsplit("/", 1)
    recreate_database(url.rsplit("/", 1)[0] + "/postgres", name)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=REPO,
        check=True,
        env={**os.environ, "DATABASE_URL": url},
    )


def child_run(phase: str, source: Path, *, url: str, media: Path, processes: int = 1) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "LOUPE_MEDIA_ROOT": str(media),
        "DJANGO_DEBUG": "0",
        "BENCH_PROCESSES": str(processes),
    }
    command = [sys.executable, __file__, "--child", phase, "--source", str(source)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--subset", type=int, default=20_000)
    parser.add_argument(
        "--image-size", type=int, default=64, help="side of the square JPEGs (img2dataset: 256)"
    )
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="shards indexed at a time (in place)"
    )
    parser.add_argument("--child", choices=["in_place", "copying"])
    parser.add_argument("--source")
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    sys.path.insert(0, str(REPO))
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a PostgreSQL database this script may drop and recreate.")
    pool = pool_build(args.pairs, args.image_size)
    subset = subset_folder(pool, args.subset)
    media = OUT / "media"
    results: dict = {
        "pairs": args.pairs,
        "image_size": args.image_size,
        "image_bytes": len(distinct_jpeg(base_jpeg(args.image_size), 0)),
        "subset": args.subset,
        "cpus": os.cpu_count(),
        "processes": args.processes,
        "load_average_at_start": os.getloadavg()[0],
    }
    for name, phase, source, fresh in [
        ("in_place_subset", "in_place", subset, True),
        ("copying_subset", "copying", subset, True),
        ("in_place_full", "in_place", pool, True),
        ("reimport_full", "in_place", pool, False),
    ]:
        if fresh:
            database_fresh(url)
            shutil.rmtree(media, ignore_errors=True)
        media.mkdir(parents=True, exist_ok=True)
        print(f"{name} ...", file=sys.stderr, flush=True)
        result = child_run(phase, source, url=url, media=media, processes=args.processes)
        result["pairs_per_s"] = (
            round(result["captions_imported"] / result["seconds"]) if result["seconds"] else 0
        )
        results[name] = result
        print(f"  {json.dumps(result)}", file=sys.stderr, flush=True)
    shutil.rmtree(media, ignore_errors=True)
    copying = results["copying_subset"]["pairs_per_s"]
    results["speedup_subset"] = round(results["in_place_subset"]["pairs_per_s"] / copying, 1)
    results["speedup_full"] = round(results["in_place_full"]["pairs_per_s"] / copying, 1)
    name = "index_pool.json" if args.image_size == 64 else f"index_pool-{args.image_size}px.json"
    (OUT.parent / name).write_text(json.dumps(results, indent=2))
    results["load_average_at_end"] = os.getloadavg()[0]
    print("| run | pairs | seconds | pairs/s | peak RSS (MiB), main / per worker | images copied |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("copying_subset", "in_place_subset", "in_place_full", "reimport_full"):
        r = results[name]
        pairs = r["captions_imported"] or r["already_present"]
        print(
            f"| {name} | {pairs:,} | {r['seconds']} | {r['pairs_per_s']:,} | "
            f"{r['rss_peak_mib']} / {r['rss_workers_peak_mib']} | {r['media_files']:,} |"
        )
    print(
        f"\nspeed-up on the subset: {results['speedup_subset']}x; full pool vs copying: {results['speedup_full']}x"
    )


if __name__ == "__main__":
    main()
