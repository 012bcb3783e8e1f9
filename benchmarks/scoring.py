"""Scoring throughput: the project's pipeline vs a naive loop, on the same generated JPEG set, in one run.

    python benchmarks/scoring.py --pairs 512                  # offline:effnet-minilm
    python benchmarks/scoring.py --pairs 128 --vit-b-32       # a ViT-B-32-sized open_clip, random weights

Naive loop: for each batch of 64 pairs, PIL-decode each pair's image in the main process (full
resolution, then resize), run the image tower in fp32, run the text tower on the batch's captions.

Pipeline: what a scoring chunk does (``scoring.features.pair_features`` + cosine/CLIPScore, without the
database write): each distinct image and text embedded once, decoding in DataLoader workers with JPEG
draft mode, channels_last, bf16 autocast when ``--cpu-bf16`` (or CUDA), results in the float16 cache.
"cold" starts from an empty cache; "warm" is a rescore (everything cached, nothing re-encoded).

Prints a Markdown table to paste into docs/scoring.md; ``--json`` writes the figures too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _django(data_dir: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["LOUPE_DATA_DIR"] = str(data_dir)
    os.environ["LOUPE_EMBEDDING_CACHE_DIR"] = str(data_dir / "embeddings")
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()


def make_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Photo-sized JPEGs with structure at several scales (smooth shapes + texture), quality 90."""
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    w, h = size
    for i in range(n):
        coarse = PILImage.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(
            (w, h), PILImage.BICUBIC
        )
        noise = rng.normal(0, 12, (h, w, 3))
        img = PILImage.fromarray(
            np.clip(np.asarray(coarse, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        )
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=90)
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


WORDS = [
    "a",
    "photo",
    "of",
    "red",
    "blue",
    "small",
    "large",
    "dog",
    "cat",
    "car",
    "tree",
    "house",
    "person",
    "beach",
    "street",
    "food",
    "bird",
    "boat",
]


def make_captions(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 14)))) + f" #{i}" for i in range(n)]


def naive_loop(encoder, paths: list[str], texts: list[str], batch: int = 64) -> np.ndarray:
    import torch
    from PIL import Image as PILImage

    cosines = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            pixels = torch.stack(
                [encoder.preprocess(PILImage.open(p).convert("RGB")) for p in paths[start : start + batch]]
            )
            img = encoder._image_forward(pixels)[:, : encoder.embed_dim].float()
            txt = encoder._text_forward(texts[start : start + batch])[:, : encoder.embed_dim].float()
            cosines.append((img * txt).sum(dim=1).numpy())
    return np.concatenate(cosines)


def pipeline(encoder, rows, chunk: int = 2048) -> np.ndarray:
    from scoring.features import pair_features
    from scoring.services import clipscore

    cosines = []
    d = encoder.embed_dim
    for start in range(0, len(rows), chunk):
        feats = pair_features(encoder=encoder, rows=rows[start : start + chunk])
        cos = np.einsum("nd,nd->n", feats.image[:, :d], feats.text[:, :d])
        clipscore(cos)
        cosines.append(cos)
    return np.concatenate(cosines)


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument(
        "--captions-per-image", type=int, default=2, help="Pool-like: several captions per image."
    )
    parser.add_argument("--image-size", default="640x480")
    parser.add_argument("--encoder", default="offline:effnet-minilm")
    parser.add_argument(
        "--vit-b-32", action="store_true", help="Use a random-weight ViT-B-32 open_clip instead."
    )
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on the CPU in the pipeline.")
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="loupe-bench-"))
    _django(tmp)
    import torch

    from scoring.encoders import encoder_load
    from scoring.features import PairRow

    name = args.encoder
    if args.vit_b_32:
        import open_clip

        weights = tmp / "vit-b-32-random.pt"
        torch.manual_seed(0)
        torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), weights)
        name = f"open_clip:ViT-B-32:{weights}"
    encoder = encoder_load(name)

    w, h = (int(v) for v in args.image_size.split("x"))
    n_images = max(1, args.pairs // args.captions_per_image)
    paths = [str(p) for p in make_jpegs(tmp / "jpegs", n_images, (w, h))]
    texts = make_captions(args.pairs)
    pair_paths = [paths[i // args.captions_per_image % n_images] for i in range(args.pairs)]
    rows = [
        PairRow(i, t, f"{i:064x}", f"{(i // args.captions_per_image) % n_images + 10**9:064x}", p)
        for i, (t, p) in enumerate(zip(texts, pair_paths, strict=True))
    ]

    # Warm-up both paths on a few pairs so one-off costs (thread pools, allocator) are not timed.
    naive_loop(encoder, pair_paths[:8], texts[:8])

    t_naive, cos_naive = timed(naive_loop, encoder, pair_paths, texts)
    encoder.cpu_bf16 = args.cpu_bf16
    t_cold, cos_pipe = timed(pipeline, encoder, rows)
    t_warm, _ = timed(pipeline, encoder, rows)
    agreement = float(np.corrcoef(cos_naive, cos_pipe)[0, 1]) if len(rows) > 1 else 1.0

    device = str(encoder.device)
    if encoder.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name()})"
    else:
        device += f" ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "encoder": name if not args.vit_b_32 else "open_clip:ViT-B-32:<random weights>",
        "pairs": args.pairs,
        "captions_per_image": args.captions_per_image,
        "image_size": args.image_size,
        "cpu_bf16": args.cpu_bf16,
        "loader_workers": os.environ.get("LOUPE_SCORING_LOADER_WORKERS", "auto"),
        "naive_pairs_per_s": args.pairs / t_naive,
        "pipeline_cold_pairs_per_s": args.pairs / t_cold,
        "pipeline_warm_pairs_per_s": args.pairs / t_warm,
        "speedup_cold": t_naive / t_cold,
        "speedup_warm": t_naive / t_warm,
        "cosine_correlation_naive_vs_pipeline": agreement,
    }
    print(
        f"\n{result['date']} · {result['device']} · {result['encoder']} · {args.pairs} pairs "
        f"({args.captions_per_image} captions/image, {args.image_size} JPEG) · cpu_bf16={args.cpu_bf16}\n"
    )
    print("| path | pairs/s | vs naive |")
    print("|---|---:|---:|")
    print(f"| naive loop (PIL in main process, batch 64, fp32) | {result['naive_pairs_per_s']:.1f} | 1.0x |")
    print(
        f"| pipeline, empty cache | {result['pipeline_cold_pairs_per_s']:.1f} | {result['speedup_cold']:.1f}x |"
    )
    print(
        f"| pipeline, rescore (cached) | {result['pipeline_warm_pairs_per_s']:.1f} | {result['speedup_warm']:.1f}x |"
    )
    print(f"\ncosine agreement naive vs pipeline (Pearson r): {agreement:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
