#!/usr/bin/env python
"""Benchmark: seconds per epoch and peak memory of encoder fine-tuning against frozen heads, on this CPU.

    python benchmarks/finetune.py [--images 43] [--epochs 2] [--threads 0] [--cases a,b,c-last,c-lora]

One fixed synthetic set for every case: ``--images`` coloured-shape pictures at 224 px, four captions
each in a known order (``training.synthetic.synthetic_image_pool``), one judgment per image, so 43
images give 258 pairs, all trained on (no validation or test split: every case runs exactly
``--epochs`` epochs, without early stopping).

Cases, each in its own child process:
- ``a``: frozen heads on precomputed features (``training.train.train``, default config). The features
  come from the offline encoder; encoding them is timed apart, since the cache pays it once per pool.
- ``b``: fine-tuning the offline encoder (EfficientNet-Lite0 + MiniLM), last 2 blocks of both towers.
- ``b-image`` / ``b-image-nocache``: the offline encoder's image tower only, last 2 blocks, with and
  without ``cache_frozen_prefix`` (the frozen EfficientNet blocks below them run once per image, or in
  every step); the text features are then computed once.
- ``c-last``: a ViT-B-32-sized open_clip with random weights, last 2 blocks of both towers.
- ``c-lora``: the same model, LoRA (r 8, alpha 16) on every block of both towers.

Memory is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child process: the peak resident set of
the whole case (Python, torch, the model, the images, training), not an increase over a baseline; the
RSS just before training is printed beside it. tracemalloc is not used: it does not see torch's
allocations. Prints JSON lines and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CASES = {
    "a": "frozen heads on precomputed features (offline encoder)",
    "b": "fine-tune offline encoder, last 2 blocks, both towers",
    "b-image": "fine-tune offline encoder, last 2 blocks, image tower (frozen prefix cached)",
    "b-image-nocache": "fine-tune offline encoder, last 2 blocks, image tower, no prefix cache",
    "c-last": "fine-tune ViT-B-32 (random weights), last 2 blocks, both towers",
    "c-lora": "fine-tune ViT-B-32 (random weights), LoRA r8 on every block, both towers",
}


def _rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _data(args):
    from training.finetune import finetune_data_build
    from training.synthetic import synthetic_image_pool

    pool = synthetic_image_pool(n_images=args.images, size=224, seed=args.seed)
    data = finetune_data_build(
        judgments=pool.judgments,
        caption_ids=pool.caption_ids,
        row_image_keys=pool.row_image_keys,
        row_images=pool.row_images,
        texts=pool.texts,
        criteria=pool.criteria,
        validation_fraction=0.0,
        test_fraction=0.0,
        min_judgments=1,
        require_held_out=False,
    )
    return pool, data


def _frozen_heads(args, out: dict) -> None:
    import torch

    from scoring.encoders import encoder_load
    from training.pairs import training_data_build
    from training.train import TrainConfig, train

    pool, data = _data(args)
    encoder = encoder_load("offline:effnet-minilm", "cpu")
    t0 = time.perf_counter()
    crops = torch.stack([encoder.preprocess.to_uint8(img) for img in data.images])
    image_feats = torch.cat([encoder.encode_images(crops[s : s + 32]) for s in range(0, len(crops), 32)])
    text_feats = encoder.encode_texts(pool.texts)[0]
    out["encode_once_s"] = round(time.perf_counter() - t0, 2)
    features = training_data_build(
        judgments=pool.judgments,
        caption_ids=pool.caption_ids,
        row_image_keys=pool.row_image_keys,
        image_feats=image_feats.numpy()[data.pairs.image_of_row],
        text_feats=text_feats.numpy(),
        embed_dim=encoder.embed_dim,
        criteria=pool.criteria,
        validation_fraction=0.0,
        test_fraction=0.0,
    )
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # first-use import of torch._dynamo, once
    out["rss_mb_before_training"] = _rss_mb()
    result = train(TrainConfig(epochs=args.epochs, seed=args.seed), features)
    out["pairs"] = features.train.n_pairs
    out["epochs"] = len(result.history)
    out["s_per_epoch"] = round(result.seconds / len(result.history), 3)
    out["epoch_s"] = []  # train() reports its total only
    out["train_loss"] = [round(r["train_bt_loss"], 4) for r in result.history]
    out["trainable_parameters"] = int(sum(p.numel() for p in result.model.parameters()))
    out["encoder_trainable_parameters"] = 0


def _finetune(args, case: str, out: dict, tmp: Path) -> None:
    import torch

    from training.finetune import FinetuneConfig, finetune

    _, data = _data(args)
    if case.startswith("b"):
        name = "offline:effnet-minilm"
        extra = {"mode": "last_blocks", "blocks": 2}
        if case.startswith("b-image"):
            extra.update(towers=("image",), cache_frozen_prefix=case == "b-image")
    else:
        import open_clip

        weights = tmp / "vit-b-32-random.pt"
        torch.manual_seed(args.seed)
        torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), weights)
        name = f"open_clip:ViT-B-32:{weights}"
        extra = {"mode": "last_blocks", "blocks": 2} if case == "c-last" else {"mode": "lora", "blocks": 0}
    config = FinetuneConfig(
        encoder=name,
        output_dir=str(tmp / "out"),
        run_name=case,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        device="cpu",
        evaluate_test=False,
        **extra,
    )
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    out["rss_mb_before_training"] = _rss_mb()
    result = finetune(config, data)
    out["pairs"] = data.pairs.train.n_pairs
    out["epochs"] = len(result.history)
    out["epoch_s"] = [round(s, 2) for s in result.epoch_seconds]
    out["s_per_epoch"] = round(sum(result.epoch_seconds) / len(result.epoch_seconds), 2)
    out["train_loss"] = [round(r["train_loss"], 4) for r in result.history]
    out["trainable_parameters"] = result.trainable_parameters + result.head_parameters
    out["encoder_trainable_parameters"] = result.trainable_parameters
    out["total_s_with_load_and_save"] = round(result.seconds, 1)
    out["batch_size_pairs"] = args.batch_size


def _measure(args, case: str, queue) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"case": case, "what": CASES[case], "torch_threads": torch.get_num_threads()}
    tmp = Path(tempfile.mkdtemp(prefix="loupe-finetune-bench-"))
    try:
        if case == "a":
            _frozen_heads(args, out)
        else:
            _finetune(args, case, out, tmp)
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except Exception as exc:  # noqa: BLE001 - the table shows the failure instead of losing the run
        out["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    queue.put(out)


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """This benchmark's options (``benchmarks/training.py --finetune`` offers them with a prefix)."""
    parser.add_argument(
        f"--{prefix}images", type=int, default=43, help="Pictures (4 captions, 6 pairs each)."
    )
    parser.add_argument(f"--{prefix}epochs", type=int, default=2)
    parser.add_argument(f"--{prefix}batch-size", type=int, default=64, help="Pairs per fine-tuning step.")
    parser.add_argument(f"--{prefix}cases", default=",".join(CASES))
    parser.add_argument(
        f"--{prefix}out", default=str(REPO / "benchmarks" / "out" / "finetune.json"), help="JSON report"
    )


def run(
    *, cases: list[str], images: int, epochs: int, batch_size: int, threads: int, seed: int, out: str
) -> dict:
    """Every case in its own child process, one after the other; writes and returns the report."""
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    args = argparse.Namespace(images=images, epochs=epochs, batch_size=batch_size, threads=threads, seed=seed)
    ctx = mp.get_context("spawn")
    started = datetime.now(UTC)
    rows = []
    for case in cases:
        queue = ctx.Queue()
        load_before = _load_average()
        t0 = time.perf_counter()
        proc = ctx.Process(target=_measure, args=(args, case, queue))
        proc.start()
        row = queue.get()
        proc.join()
        row["case_wall_s"] = round(time.perf_counter() - t0, 1)
        row["load_average_before"] = load_before
        row["load_average_after"] = _load_average()
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "date": started.isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {mp.cpu_count()} CPU cores (shared), {platform.python_version()}",
        "images": images,
        "epochs": epochs,
        "memory": "ru_maxrss of each case's own child process (peak RSS of the whole case)",
        "rows": rows,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2))
    return report


def table(report: dict) -> str:
    """The report as the markdown table of docs/finetune.md."""
    lines = [
        f"Measured {report['date']} on {report['machine']}; {report['images']} images, {report['epochs']} epochs.",
        "",
        "| case | pairs | trainable params (encoder) | s / epoch | epochs (s) | peak RSS (ru_maxrss) "
        "| RSS before training | load avg |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['what']} | | | failed: {r['error']} | | | | |")
            continue
        note = f" (+ {r['encode_once_s']} s to encode once)" if "encode_once_s" in r else ""
        lines.append(
            f"| {r['what']} | {r['pairs']} | {r['trainable_parameters']:,} ({r['encoder_trainable_parameters']:,}) "
            f"| {r['s_per_epoch']}{note} | {', '.join(str(s) for s in r['epoch_s']) or 'average only'} "
            f"| {r['peak_rss_mb']:,} MB | {r['rss_mb_before_training']:,} MB "
            f"| {r['load_average_before']} -> {r['load_average_after']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        report = run(
            cases=[c for c in args.cases.split(",") if c],
            images=args.images,
            epochs=args.epochs,
            batch_size=args.batch_size,
            threads=args.threads,
            seed=args.seed,
            out=args.out,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print()
    print(table(report))


if __name__ == "__main__":
    main()
