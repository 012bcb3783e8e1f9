"""Benchmark: the shard pass (one decode per image) against the current two-pass path, per pair, on CPU.

    DATABASE_URL=postgres://.../loupe_bench_shard_pass nice -n 5 python benchmarks/shard_pass.py [--pairs 12000]

Builds (once, under benchmarks/out/shard_pass/) an img2dataset-style pool: WebDataset shards of
``--shard-size`` samples with a Parquet beside each, one caption per image, every image a distinct
256 px JPEG (img2dataset's default size; a smooth random picture, so decoding costs what a photo of
that size costs). It indexes the pool in place into a fresh PostgreSQL database (recreated: point
DATABASE_URL at one you can drop), then measures, in this one process and on the same rows:

* ``two_pass``: what the code does today: ``pool.inspection.images_inspect`` (cleaning's full decode:
  validity, phash, size), then a CLIPScore scoring run (``scoring.inference`` through
  ``scoring.features.pair_features``: each image read and decoded AGAIN to embed it);
* ``shard_pass``: ``scoring.shard_pass`` over every shard (one decode feeding the checks, the phash
  and the encoder; cache, by-shard features, Image rows and Score rows written).

Between the two, Image rows are reset to "not inspected", scores deleted and the embedding cache is a
new folder, so both start from the same state. The order alternates with ``--shard-pass-first``.
The encoder is a small open_clip config with random weights built locally (no download). One torch
thread, no DataLoader worker processes (``LOUPE_SCORING_LOADER_WORKERS=0``): both paths decode in this
process, where their decodes are counted. Timing is CPU time of this process (user + system) and wall.

Prints a markdown table and writes benchmarks/out/shard_pass.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out" / "shard_pass"
sys.path.insert(0, str(REPO))

# A small CLIP: real ViT and text transformer shapes, a fraction of ViT-B-32's cost.
BENCH_ARCH = "loupe-bench-clip"
BENCH_CONFIG = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 96, "layers": 4, "width": 256, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
}
WORDS = [
    *[
        "a",
        "photo",
        "of",
        "the",
        "red",
        "blue",
        "small",
        "large",
        "dog",
        "cat",
        "house",
        "tree",
        "car",
        "street",
        "beach",
        "mountain",
        "city",
        "person",
    ],
    *[
        "woman",
        "man",
        "child",
        "food",
        "plate",
        "table",
        "chair",
        "window",
        "sky",
        "cloud",
        "river",
        "boat",
        "bird",
        "flower",
        "garden",
        "night",
    ],
]


# --- data -------------------------------------------------------------------------------------------


def _jpeg(i: int, size: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(i)
    small = rng.integers(0, 255, size=(6, 6, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((size, size), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def pool_build(pairs: int, shard_size: int, image_size: int) -> Path:
    """img2dataset-shaped shards (index_pool's writer) with this benchmark's images and words."""
    from benchmarks.index_pool import shards_write

    folder = OUT / f"pool-{pairs}-{shard_size}-{image_size}px"
    shards_write(
        folder,
        pairs,
        shard_size=shard_size,
        image_size=image_size,
        image=lambda i: _jpeg(i, image_size),
        words=WORDS,
        progress_every=1,
    )
    return folder


def encoder_build() -> str:
    import open_clip
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    config = OUT / f"{BENCH_ARCH}.json"
    config.write_text(json.dumps(BENCH_CONFIG))
    weights = OUT / f"{BENCH_ARCH}.pt"
    if not weights.exists():
        open_clip.add_model_config(config)
        torch.manual_seed(0)
        torch.save(open_clip.create_model(BENCH_ARCH, pretrained=None).state_dict(), weights)
    return f"open_clip:{BENCH_ARCH}:{weights}"


# --- measuring ---------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Decodes:
    """Counts full decodes (``pool.images.image_decode``: cleaning's and the shard pass's) and the
    scoring pipeline's image reads (each one a draft-mode decode)."""

    def __init__(self):
        from pool import images
        from scoring import pipeline

        self.full = 0
        self.pipeline = 0
        real_decode = images.image_decode
        real_item = pipeline.ImageFiles.__getitem__

        def decode(data, **kwargs):
            self.full += 1
            return real_decode(data, **kwargs)

        def item(dataset, index):
            self.pipeline += 1
            return real_item(dataset, index)

        images.image_decode = decode
        pipeline.ImageFiles.__getitem__ = item

    def take(self) -> dict:
        out = {"full_decodes": self.full, "pipeline_decodes": self.pipeline}
        self.full = self.pipeline = 0
        return out


def reset(cache_dir: Path) -> None:
    from django.conf import settings

    from pool.models import Image
    from scoring.models import Score

    Image.objects.update(inspected_at=None, phash="")
    Score.objects.all().delete()
    cache_dir.mkdir(parents=True, exist_ok=True)
    settings.EMBEDDING_CACHE_DIR = cache_dir


def two_pass(encoder: str, decodes: Decodes) -> dict:
    from pool.inspection import images_inspect
    from scoring.inference import scoring_run_sync
    from scoring.services import scoring_run_start

    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    inspected = images_inspect()
    cpu1, wall1 = cpu_seconds(), time.perf_counter()
    run = scoring_run_sync(run=scoring_run_start(encoder=encoder, reward_model_version=0, enqueue=False))
    cpu2, wall2 = cpu_seconds(), time.perf_counter()
    assert run.status == "succeeded", run.error
    return {
        "pairs": run.done,
        "inspected": dict(inspected),
        "cpu_s": cpu2 - cpu0,
        "wall_s": wall2 - wall0,
        "inspect_cpu_s": cpu1 - cpu0,
        "inspect_wall_s": wall1 - wall0,
        "score_cpu_s": cpu2 - cpu1,
        **decodes.take(),
    }


def shard_pass(encoder: str, decodes: Decodes) -> dict:
    from scoring.shard_pass import shard_pass_start, shard_pass_sync

    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    run = shard_pass_sync(run=shard_pass_start(encoder=encoder, enqueue=False))
    cpu1, wall1 = cpu_seconds(), time.perf_counter()
    assert run.status == "succeeded", run.error
    return {
        "pairs": run.done,
        "shards": run.shards_done,
        "unreadable": run.unreadable_images,
        "cpu_s": cpu1 - cpu0,
        "wall_s": wall1 - wall0,
        **decodes.take(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=12_000)
    parser.add_argument("--shard-size", type=int, default=2_000)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--shard-pass-first", action="store_true")
    parser.add_argument("--extrapolate-to", type=int, default=10_000_000)
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("DATABASE_URL must point at a PostgreSQL database this script may drop and recreate.")
    os.environ["LOUPE_SCORING_LOADER_WORKERS"] = "0"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from benchmarks.pg import recreate_database

    recreate_database(url.rsplit("/", 1)[0] + "/postgres", url.rsplit("/", 1)[1])
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, check=True)

    import django
    import torch

    torch.set_num_threads(1)
    django.setup()
    from pool.importing import pool_import

    source = pool_build(args.pairs, args.shard_size, args.image_size)
    encoder = encoder_build()
    started = time.perf_counter()
    imported = pool_import(source=str(source))
    assert imported.status == "succeeded", imported.error
    print(f"indexed {imported.done} pairs in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    load = os.getloadavg()

    from scoring.encoders import encoder_load

    encoder_load(encoder)  # built once, outside the timings (both paths share the loaded model)
    decodes = Decodes()
    order = ("shard_pass", "two_pass") if args.shard_pass_first else ("two_pass", "shard_pass")
    results: dict[str, dict] = {}
    clip_by_path: dict[str, dict] = {}
    for phase in order:
        reset(OUT / f"cache-{phase}-{time.time_ns()}")
        print(f"{phase} ...", file=sys.stderr, flush=True)
        results[phase] = (two_pass if phase == "two_pass" else shard_pass)(encoder, decodes)
        from scoring.models import Score

        clip_by_path[phase] = dict(Score.objects.values_list("caption_id", "clipscore"))
    load_after = os.getloadavg()

    base, new = results["two_pass"], results["shard_pass"]
    assert base["pairs"] == new["pairs"], (base["pairs"], new["pairs"])
    pairs = new["pairs"]
    diff = max(
        abs((clip_by_path["two_pass"][k] or 0) - (clip_by_path["shard_pass"][k] or 0))
        for k in clip_by_path["two_pass"]
    )
    per_pair = {k: 1000 * v["cpu_s"] / pairs for k, v in results.items()}
    summary = {
        "pairs": pairs,
        "shard_size": args.shard_size,
        "image_size": args.image_size,
        "encoder": BENCH_CONFIG,
        "order": order,
        "results": results,
        "cpu_ms_per_pair": per_pair,
        "speedup_cpu": per_pair["two_pass"] / per_pair["shard_pass"],
        "max_clipscore_difference": diff,
        "extrapolated_core_hours": {k: v * args.extrapolate_to / 1000 / 3600 for k, v in per_pair.items()},
        "extrapolate_to": args.extrapolate_to,
        "load_average_before": load,
        "load_average_after": load_after,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (REPO / "benchmarks" / "out").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "out" / "shard_pass.json").write_text(json.dumps(summary, indent=2))

    print(
        f"\n{pairs:,} pairs, {args.image_size} px JPEGs, shards of {args.shard_size:,}; order {order}; "
        f"load {load[0]:.1f} -> {load_after[0]:.1f}\n"
    )
    print(
        "| path | CPU ms/pair | wall s | full decodes | pipeline decodes | core-hours at "
        f"{args.extrapolate_to / 1e6:g}M pairs |"
    )
    print("|---|---|---|---|---|---|")
    for phase in ("two_pass", "shard_pass"):
        r = results[phase]
        print(
            f"| {phase} | {per_pair[phase]:.2f} | {r['wall_s']:.1f} | {r['full_decodes']:,} | "
            f"{r['pipeline_decodes']:,} | {summary['extrapolated_core_hours'][phase]:.0f} |"
        )
    print(
        f"\ntwo_pass: inspect {1000 * base['inspect_cpu_s'] / pairs:.2f} + score "
        f"{1000 * base['score_cpu_s'] / pairs:.2f} ms/pair. Shard pass {summary['speedup_cpu']:.2f}x less CPU "
        f"per pair; largest CLIPScore difference between the paths {diff:.4f}."
    )


if __name__ == "__main__":
    main()
