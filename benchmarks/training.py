#!/usr/bin/env python
"""Benchmark: training the reward heads from cached embeddings, wall time and peak memory on this CPU.

    python benchmarks/training.py [--judgments 10000] [--captions 4] [--noise 0.5] [--threads 0]

Features are synthetic with the offline encoder's widths (image 384 + 1280 = 1664, text 384; the first
384 columns of each row are the unit-norm shared embedding), because what is measured is the head's
training cost, which depends only on the widths and the number of pairs, not on where the numbers came
from. One judgment ranks ``--captions`` captions of one image (6 pairs for 4 captions), so 10,000
judgments are 60,000 pairs, of which ~70% (the training images) are trained on.

The same run reports quality against a known hidden preference: a caption's hidden reward is part
image-text agreement (what CLIPScore sees) and part text qualities CLIPScore cannot see; simulated
annotators rank by it with Gaussian noise (``--noise``, in reward standard deviations). Held-out
accuracy is reported against the noisy labels (what the gate sees) and against the noise-free hidden
ranking, next to CLIPScore's accuracy on the same pairs.

``--demo N`` instead measures quality on the demo pool (``pool/demo.py``: N openclipart drawings plus
the packaged photos, each with up to four real candidate captions: description, title, keywords, a
hard negative): features from the offline encoder (EfficientNet-Lite0 + MiniLM, computed here and
cached under benchmarks/out/), simulated annotators from ``training/simulate.py`` ranking by the demo's
truth table (description > title > keywords > negative) with noise, three annotators per image. It
reports held-out accuracy of the reward model, CLIPScore's on the same pairs, and the human ceiling.

``--finetune`` instead measures fine-tuning's cost: seconds per epoch and peak memory for the offline
encoder (last 2 blocks) and a ViT-B-32-sized open_clip with random weights (last 2 blocks, LoRA), with
frozen heads measured in the same run, each case in its own process. It is ``benchmarks/finetune.py``
(same code, same ``--ft-images``, ``--ft-epochs``, ``--ft-batch-size``, ``--ft-cases`` options;
``--threads`` and ``--seed`` are shared).

The measurement runs in a child process so ``ru_maxrss`` is the training's own peak. Prints JSON and a
markdown snippet.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _vm(field: str) -> float | None:
    """A memory figure of this process from /proc (MB), e.g. VmRSS now or VmHWM (peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _peak_reset() -> None:
    """Reset the peak RSS (Linux: writing 5 to clear_refs), so the peak is the training's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _measure(args: argparse.Namespace, queue) -> None:
    import torch

    from training.config import TrainConfig
    from training.evaluate import reward_model_evaluate
    from training.pairs import training_data_build
    from training.synthetic import synthetic_judgments, synthetic_pool
    from training.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pool = synthetic_pool(
        n_images=args.judgments,
        captions_per_image=args.captions,
        embed_dim=384,
        image_extra=1280,
        text_extra=0,
        seed=args.seed,
    )

    def build(source, judgments):
        return training_data_build(
            judgments=judgments,
            caption_ids=source.caption_ids,
            row_image_keys=source.row_image_keys,
            image_feats=source.image_feats,
            text_feats=source.text_feats,
            embed_dim=source.embed_dim,
            criteria=source.criteria,
        )

    data = build(pool, synthetic_judgments(pool, noise=args.noise, rating_noise=0.5, seed=args.seed + 1))
    truth = build(pool, synthetic_judgments(pool, noise=0.0, seed=args.seed + 1))
    prep_s = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del pool  # the per-caption copies of the image rows; TrainingData keeps one row per image
    # The optimizer's first construction imports torch._dynamo (seconds, once per process): a worker
    # pays it once, not per training, so it is timed apart.
    t0 = time.perf_counter()
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    import_s = time.perf_counter() - t0
    current_mb = _vm("VmRSS")
    _peak_reset()
    config = TrainConfig(seed=args.seed)
    if args.epochs:
        config.epochs = args.epochs
    result = train(config, data)
    train_s = result.seconds
    report = reward_model_evaluate(result.model, data, data.test)
    truth_report = reward_model_evaluate(result.model, truth, truth.test)
    queue.put(
        {
            "judgments": args.judgments,
            "captions_per_judgment": args.captions,
            "pairs_total": data.train.n_pairs + data.validation.n_pairs + data.test.n_pairs,
            "pairs_train": data.train.n_pairs,
            "pairs_test": data.test.n_pairs,
            "image_dim": int(data.image_feats.shape[1]),
            "text_dim": int(data.text_feats.shape[1]),
            "torch_threads": torch.get_num_threads(),
            "config": {k: getattr(config, k) for k in ("epochs", "batch_size", "hidden", "n_heads", "lr")},
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "data_prep_s": round(prep_s, 2),
            "train_s": round(train_s, 2),
            "s_per_epoch": round(train_s / max(1, len(result.history)), 2),
            "optimizer_first_import_s": round(import_s, 2),
            "peak_rss_mb_data_generation": round(rss_before / 1024, 1),
            "rss_mb_before_training": current_mb,
            "peak_rss_mb_training": _vm("VmHWM"),
            "noise": args.noise,
            "accuracy_noisy_labels": report["accuracy"],
            "clipscore_accuracy_noisy_labels": report["clipscore_accuracy"],
            "accuracy_hidden_truth": truth_report["accuracy"],
            "clipscore_accuracy_hidden_truth": truth_report["clipscore_accuracy"],
            "ece": report["ece"],
            "spearman": report["spearman"],
        }
    )


def _demo_features(n: int, out_root: Path):
    """Demo images and captions with offline-encoder features, cached in benchmarks/out/."""
    import hashlib

    import numpy as np
    import torch

    from pool.demo import demo_source_build, demo_truth_load
    from scoring.encoders import encoder_load

    out_dir = out_root / f"demo-{n}"
    cache = out_dir / "features.npz"
    if not (out_dir / "truth.jsonl").exists():
        demo_source_build(out_dir=out_dir, clipart_limit=n, workers=2)
    quality = demo_truth_load(out_dir / "truth.jsonl")
    rows = [json.loads(line) for line in (out_dir / "truth.jsonl").open()]
    sha_of = {}
    for row in rows:
        if row["image"] not in sha_of:
            sha_of[row["image"]] = hashlib.sha256((out_dir / row["image"]).read_bytes()).hexdigest()
    # One row per (image, distinct caption text).
    seen, items = set(), []
    for row in rows:
        key = (row["image"], row["text"].strip())
        if key not in seen and row["text"].strip():
            seen.add(key)
            items.append((row["image"], row["text"].strip(), row["role"]))
    encoder_name = "offline:effnet-minilm"
    if cache.exists():
        z = np.load(cache)
        image_feats, text_feats = z["image"], z["text"]
        embed_dim = int(z["embed_dim"])
    else:
        enc = encoder_load(encoder_name, device="cpu")
        images = sorted({i for i, _, _ in items})
        feats = {}
        for start in range(0, len(images), 64):
            batch = images[start : start + 64]
            pixels = torch.stack([enc.preprocess(enc.preprocess.load(out_dir / b)) for b in batch])
            for name, f in zip(batch, enc.encode_images(pixels).numpy(), strict=True):
                feats[name] = f
        texts = [t for _, t, _ in items]
        text_feats = np.concatenate(
            [enc.encode_texts(texts[s : s + 256])[0].numpy() for s in range(0, len(texts), 256)]
        )
        image_feats = np.stack([feats[i] for i, _, _ in items])
        embed_dim = enc.embed_dim
        np.savez(cache, image=image_feats, text=text_feats, embed_dim=embed_dim)
    # Identical files (exact duplicate drawings, and SVGs that rasterise to the same blank image) are
    # one image, as the pool's cleaning would make them: only the first file's captions are kept.
    first_file = {}
    for image, _, _ in items:
        first_file.setdefault(sha_of[image], image)
    keep = [n for n, (image, _, _) in enumerate(items) if first_file[sha_of[image]] == image]
    items = [items[n] for n in keep]
    keys = [sha_of[i] for i, _, _ in items]
    qualities = [quality[(sha_of[i], t)] for i, t, _ in items]
    return (
        items,
        keys,
        qualities,
        image_feats[keep].astype(np.float32),
        text_feats[keep].astype(np.float32),
        embed_dim,
    )


DEMO_CRITERIA = ("accuracy", "completeness")


def demo_images(keys: list[str]) -> dict[str, list[int]]:
    """Caption rows of each demo image (by sha256), images in a stable order."""
    from collections import defaultdict

    by_image: dict[str, list[int]] = defaultdict(list)
    for row, key in enumerate(keys):
        by_image[key].append(row)
    return dict(sorted(by_image.items()))


def demo_judgments(
    by_image: dict[str, list[int]],
    qualities: list[float],
    *,
    noise: float,
    rounds: int,
    rng,
    images: list[str] | None = None,
    budget: int | None = None,
    first_user: int = 1,
) -> list:
    """Simulated judgments (``training.simulate``: Bradley-Terry temperature ``noise`` on the demo's
    truth) of the demo's images with at least two captions: ``rounds`` annotators per image, or, with
    ``budget``, passes over ``images`` in their given order, one judgment per image per pass, until
    ``budget`` judgments. A caption's id is its row + 1; a task is an image (its index + 1)."""
    from training.pairs import JudgmentRecord
    from training.simulate import AnnotatorConfig, ranking_sample, ratings_sample

    config = AnnotatorConfig(noise=noise, tie_margin=0.02)
    task_of = {key: n for n, key in enumerate(by_image, start=1)}
    pool = [k for k in (images if images is not None else list(by_image)) if len(by_image[k]) >= 2]
    if budget is None:
        order = [k for k in pool for _ in range(rounds)]
    else:
        order = [pool[n % len(pool)] for n in range(budget)] if pool else []
    seen: dict[str, int] = {}
    out = []
    for key in order:
        rows = by_image[key]
        q = [qualities[r] for r in rows]
        ids = [r + 1 for r in rows]
        user = first_user + seen.get(key, 0)
        seen[key] = seen.get(key, 0) + 1
        ranking = ranking_sample(q, ids, config, rng)
        ratings = ratings_sample(q, ids, list(DEMO_CRITERIA), config, rng)
        out.append(JudgmentRecord(task_of[key], user, ranking, ratings, key))
    return out


def _measure_demo(args: argparse.Namespace, queue) -> None:
    import numpy as np

    from training.config import TrainConfig
    from training.evaluate import reward_model_evaluate
    from training.pairs import human_agreement, image_split, training_data_build
    from training.train import train

    t0 = time.perf_counter()
    items, keys, qualities, image_feats, text_feats, embed_dim = _demo_features(
        args.demo, REPO / "benchmarks" / "out"
    )
    prep_s = time.perf_counter() - t0
    by_image = demo_images(keys)
    criteria = list(DEMO_CRITERIA)
    rng = np.random.default_rng(args.seed)

    def judgments(noise: float, annotators: int):
        return demo_judgments(by_image, qualities, noise=noise, rounds=annotators, rng=rng)

    def build(records):
        return training_data_build(
            judgments=records,
            caption_ids=list(range(1, len(keys) + 1)),
            row_image_keys=keys,
            image_feats=image_feats,
            text_feats=text_feats,
            embed_dim=embed_dim,
            criteria=criteria,
        )

    noisy_records = judgments(args.annotator_noise, 3)
    noisy = build(noisy_records)
    truth = build(judgments(0.0, 1))
    result = train(TrainConfig(seed=args.seed), noisy)
    test_records = [r for r in noisy_records if image_split(r.image_key) == "test"]
    ceiling, ceiling_pairs = human_agreement(test_records)
    report = reward_model_evaluate(
        result.model, noisy, noisy.test, human_ceiling=ceiling, human_ceiling_pairs=ceiling_pairs
    )
    truth_report = reward_model_evaluate(result.model, truth, truth.test)
    queue.put(
        {
            "demo_images": len(by_image),
            "captions": len(keys),
            "judgments": len(noisy_records),
            "annotator_noise": args.annotator_noise,
            "pairs_test": noisy.test.n_pairs,
            "feature_prep_s": round(prep_s, 1),
            "train_s": round(result.seconds, 2),
            "epochs_run": len(result.history),
            "accuracy": report["accuracy"],
            "clipscore_accuracy": report["clipscore_accuracy"],
            "human_ceiling": report["human_ceiling"],
            "tie_accuracy": report["tie_accuracy"],
            "ece": report["ece"],
            "accuracy_hidden_truth": truth_report["accuracy"],
            "clipscore_accuracy_hidden_truth": truth_report["clipscore_accuracy"],
            "spearman": report["spearman"],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judgments", type=int, default=10_000)
    parser.add_argument("--captions", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument(
        "--epochs", type=int, default=0, help="0: TrainConfig's default (with early stopping)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--demo", type=int, default=0, help="quality on the demo pool with this many drawings"
    )
    parser.add_argument("--annotator-noise", type=float, default=0.1, help="demo: Bradley-Terry temperature")
    parser.add_argument(
        "--finetune",
        action="store_true",
        help="instead: seconds per epoch and peak memory of fine-tuning (offline encoder, ViT-B-32-sized "
        "open_clip with random weights) against frozen heads, each in its own process (benchmarks/finetune.py)",
    )
    from benchmarks import finetune as finetune_bench

    finetune_bench.add_arguments(parser, prefix="ft-")
    args = parser.parse_args()
    if args.finetune:
        try:
            report = finetune_bench.run(
                cases=[c for c in args.ft_cases.split(",") if c],
                images=args.ft_images,
                epochs=args.ft_epochs,
                batch_size=args.ft_batch_size,
                threads=args.threads,
                seed=args.seed,
                out=args.ft_out,
            )
        except ValueError as exc:
            parser.error(str(exc))
        print()
        print(finetune_bench.table(report))
        return
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure_demo if args.demo else _measure, args=(args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    print(json.dumps(result, indent=2))
    if args.demo:
        return
    r = result
    print(
        f"\n| judgments | pairs (train) | epochs run | train wall | s/epoch | peak RSS | accuracy (noisy labels) "
        f"| CLIPScore | accuracy (hidden truth) | CLIPScore |\n|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {r['judgments']:,} x {r['captions_per_judgment']} | {r['pairs_total']:,} ({r['pairs_train']:,}) "
        f"| {r['epochs_run']} | {r['train_s']} s | {r['s_per_epoch']} | {r['peak_rss_mb_training']:.0f} MB "
        f"| {r['accuracy_noisy_labels']:.3f} | {r['clipscore_accuracy_noisy_labels']:.3f} "
        f"| {r['accuracy_hidden_truth']:.3f} | {r['clipscore_accuracy_hidden_truth']:.3f} |"
    )


if __name__ == "__main__":
    main()
