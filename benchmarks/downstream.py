"""Do filtered subsets train better image-text models? DataComp's question on the demo pool.

    python benchmarks/downstream.py [--clipart 1200] [--seeds 3] [--share 0.3]

Pool: the demo pool's sources (pool/demo.py: openclipart drawings + packaged photos; captions = title,
description, "clip art of <keywords>" and a hard negative, another drawing's title from the same
category), embedded with the offline encoder (EfficientNet-Lite0 + MiniLM), built and cached by
benchmarks/active_learning.py's ``pool_build`` under var/benchmarks/. Hidden preference: the demo's
truth table (description > title > keywords > negative); simulated annotators judge through
training/simulate.py with Bradley-Terry noise ``--noise``.

Protocol (the product's, curate/downstream.py, offline):
1. Exact-duplicate images are dropped (the product's cleaning does the same). The rest are split once
   (fixed seed) into a pool (70%) and a held-out set (30%). Each held-out image is judged once by a
   simulated annotator (fixed seed); its top-ranked caption is its held-out pair. No caption of a
   held-out image, and no caption of another image with a held-out caption's text (a hard negative is
   another drawing's title), is in any training subset.
2. Per seed: a simulated annotator judges every pool task once; the reward model is trained on those
   judgments with the product's code (training/train.py) and scores every pool caption.
3. Training subsets of the pool, all of one size (``--share`` of the pool) except the whole pool:
   reward top-k%, CLIPScore top-k% (2.5 max(cos, 0) on the shared embedding), random k%, the hidden
   preference's top-k% (an oracle: the best any filter could do with this preference), whole pool.
4. The same downstream model (training/downstream.py: frozen features -> two linear projections, CLIP
   loss, learnable temperature; same steps and batch for every subset) trains on each and is measured
   by image->text and text->image recall@1/5 on the held-out pairs. Mean ± standard deviation over
   seeds; writes docs/downstream.png and var/benchmarks/downstream.json, prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.active_learning import (  # noqa: E402
    CRITERIA,
    Pool,
    model_outputs,
    pool_build,
    synthetic_pool_data,
    training_data,
)
from training.downstream import METRICS  # noqa: E402
from training.pairs import JudgmentRecord  # noqa: E402
from training.simulate import AnnotatorConfig, CaptionInfo, judgment_simulate  # noqa: E402

SUBSETS = {
    "reward": "reward top {share}",
    "clipscore": "CLIPScore top {share}",
    "random": "random {share}",
    "oracle": "hidden preference top {share} (oracle)",
    "pool": "whole pool",
}


def duplicate_images(pool: Pool) -> set[int]:
    """Images whose features equal an earlier image's: the same drawing filed twice (openclipart has
    exact duplicates). The product's cleaning marks them duplicates and they leave the usable pool;
    here their captions are dropped, or a held-out image's twin in training would leak its pair."""
    _, first = np.unique(np.round(pool.image_feats, 4), axis=0, return_index=True)
    return set(range(len(pool.image_feats))) - set(first.tolist())


def split_images(pool: Pool, test_share: float, excluded: set[int]) -> tuple[list[int], list[int]]:
    """(pool tasks, held-out tasks), one task per image, split once with a fixed seed."""
    tasks = np.array([t for t in range(len(pool.tasks)) if pool.task_image[t] not in excluded])
    order = tasks[np.random.default_rng(12345).permutation(len(tasks))]
    n_test = int(test_share * len(order))
    return sorted(order[n_test:].tolist()), sorted(order[:n_test].tolist())


def judge(pool: Pool, task: int, config: AnnotatorConfig, rng: np.random.Generator) -> JudgmentRecord:
    """One simulated annotator's ranking (and ratings) of one task's captions."""
    rows = pool.tasks[task]
    image_key = str(pool.task_image[task])
    captions = [CaptionInfo(int(r), str(pool.texts[r]), "", image_key) for r in rows]
    quality = {int(r): float(pool.quality[r]) for r in rows}
    ranking, ratings = judgment_simulate(
        captions=captions,
        criteria=CRITERIA,
        preference=lambda c: quality[c.caption_id],
        config=config,
        rng=rng,
    )
    return JudgmentRecord(task, 1, ranking, ratings, image_key)


def held_out_rows(pool: Pool, tasks: list[int], config: AnnotatorConfig) -> np.ndarray:
    """Each held-out task's top-ranked caption (the first of its best tier), judged once."""
    rng = np.random.default_rng(999)
    return np.array([judge(pool, t, config, rng).ranking[0][0] for t in tasks], dtype=np.int64)


def reward_scores(pool: Pool, judgments: list[JudgmentRecord], seed: int, epochs: int) -> np.ndarray:
    """The product's reward model trained on ``judgments``; ensemble-mean reward of every caption row."""
    from training.config import TrainConfig
    from training.train import train

    config = TrainConfig(epochs=epochs, hidden=64, n_heads=5, seed=seed, patience=epochs)
    model = train(config, training_data(pool, judgments)).model
    return model_outputs(model, pool, np.arange(len(pool.text_feats))).mean(axis=0)


def clipscores(pool: Pool) -> np.ndarray:
    k = pool.embed_dim
    img = pool.image_feats[pool.row_image, :k]
    txt = pool.text_feats[:, :k]
    cos = (img * txt).sum(1) / np.maximum(np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1), 1e-8)
    return 2.5 * np.maximum(cos, 0.0)


def top_rows(rows: np.ndarray, scores: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` rows with the highest score (stable: ties go to the lower row)."""
    return np.sort(rows[np.argsort(-scores[rows], kind="stable")[:size]])


def composition(pool: Pool, rows: np.ndarray) -> dict[str, float]:
    roles, counts = np.unique(pool.roles[rows], return_counts=True)
    return {str(r): float(c / len(rows)) for r, c in zip(roles, counts, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pool", choices=["demo", "synthetic"], default="demo")
    parser.add_argument("--clipart", type=int, default=1200, help="Drawings in the demo pool.")
    parser.add_argument("--images", type=int, default=600, help="Images in the synthetic pool.")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--share", type=float, default=0.3, help="Size of the filtered subsets.")
    parser.add_argument("--test-share", type=float, default=0.3, help="Images held out.")
    parser.add_argument("--noise", type=float, default=0.1, help="Simulated annotators' noise.")
    parser.add_argument("--epochs", type=int, default=15, help="Reward model epochs.")
    parser.add_argument("--steps", type=int, default=None, help="Downstream steps (default: config).")
    parser.add_argument("--out", default=str(ROOT / "docs" / "downstream.png"))
    parser.add_argument("--json", default=str(ROOT / "var" / "benchmarks" / "downstream.json"))
    args = parser.parse_args()

    import torch

    from training.downstream import DownstreamConfig, config_dict, metrics_summary, subset_evaluate

    # One thread: small matmuls, and on a shared machine extra OpenMP threads mostly spin.
    torch.set_num_threads(1)
    started = time.monotonic()
    if args.pool == "demo":
        pool = Pool(pool_build(ROOT / "var" / "benchmarks", args.clipart))
    else:
        pool = Pool(synthetic_pool_data(args.images))
    base = DownstreamConfig(**({"steps": args.steps} if args.steps else {}))
    annotator = AnnotatorConfig(noise=args.noise)
    duplicates = duplicate_images(pool)
    pool_tasks, test_tasks = split_images(pool, args.test_share, duplicates)
    test_images = {pool.task_image[t] for t in test_tasks}
    test_rows = held_out_rows(pool, test_tasks, annotator)
    # Split by image, and decontaminated by text as curate/downstream.py does: a held-out caption's
    # text on another image (a hard negative is another drawing's title) is not trained on either.
    test_texts = {str(pool.texts[r]).strip() for r in test_rows}
    pool_rows = np.array(
        [
            r
            for r in range(len(pool.texts))
            if int(pool.row_image[r]) not in test_images | duplicates
            and str(pool.texts[r]).strip() not in test_texts
        ],
        dtype=np.int64,
    )
    same_text = sum(
        1
        for r in range(len(pool.texts))
        if int(pool.row_image[r]) not in test_images | duplicates and str(pool.texts[r]).strip() in test_texts
    )
    size = int(round(args.share * len(pool_rows)))
    share = f"{args.share:.0%}"
    roles = {str(r): int((pool.roles == r).sum()) for r in np.unique(pool.roles)}
    print(
        f"pool: {len(pool.image_feats)} images ({len(duplicates)} duplicates dropped), {len(pool.texts)} "
        f"captions {roles}; {same_text} captions of other images share a held-out text and are dropped; "
        "training pool "
        f"{len(pool_rows)} captions of {len(pool_tasks)} judged tasks' images, held out {len(test_rows)} "
        f"judged-best pairs (held-out roles {composition(pool, test_rows)}); subsets of {size} pairs; "
        f"downstream {base.steps} steps x {base.batch_size}; {args.seeds} seeds",
        flush=True,
    )
    test_image = pool.image_feats[pool.row_image[test_rows]]
    test_text = pool.text_feats[test_rows]
    clip = clipscores(pool)
    runs: dict[str, list[dict]] = {name: [] for name in SUBSETS}
    compositions: dict[str, list[dict]] = {name: [] for name in SUBSETS}
    quality: dict[str, list[float]] = {name: [] for name in SUBSETS}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        judgments = [judge(pool, t, annotator, rng) for t in pool_tasks]
        reward = reward_scores(pool, judgments, seed, args.epochs)
        subsets = {
            "reward": top_rows(pool_rows, reward, size),
            "clipscore": top_rows(pool_rows, clip, size),
            "random": np.sort(np.random.default_rng(10_000 + seed).choice(pool_rows, size, replace=False)),
            "oracle": top_rows(pool_rows, pool.quality, size),
            "pool": pool_rows,
        }
        config = replace(base, seed=seed)
        for name, rows in subsets.items():
            metrics = subset_evaluate(
                config, pool.image_feats[pool.row_image[rows]], pool.text_feats[rows], test_image, test_text
            )
            runs[name].append(metrics)
            compositions[name].append(composition(pool, rows))
            quality[name].append(float(pool.quality[rows].mean()))
            print(
                f"seed {seed} {name:>9}: "
                + " ".join(f"{k} {metrics[k]:.3f}" for k in METRICS)
                + f"  ({time.monotonic() - started:.0f}s)",
                flush=True,
            )
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, 2 shared CPU cores, torch {torch.__version__}, 1 thread",
        "pool": args.pool,
        "captions": len(pool.texts),
        "pool_captions": len(pool_rows),
        "held_out": len(test_rows),
        "duplicate_images_dropped": len(duplicates),
        "same_text_captions_dropped": same_text,
        "subset_size": size,
        "seeds": args.seeds,
        "noise": args.noise,
        "downstream": config_dict(base),
        "chance": {"r1": 1 / len(test_rows), "r5": 5 / len(test_rows)},
        "results": {},
        "seconds": round(time.monotonic() - started),
    }
    print("\n| training subset | pairs | mean hidden quality | I→T R@1 | I→T R@5 | T→I R@1 | T→I R@5 |")
    print("|---|---|---|---|---|---|---|")
    for name, label in SUBSETS.items():
        summary = metrics_summary(runs[name])
        n = size if name != "pool" else len(pool_rows)
        roles_mean = {
            role: float(np.mean([c.get(role, 0.0) for c in compositions[name]]))
            for role in sorted({r for c in compositions[name] for r in c})
        }
        report["results"][name] = {
            "label": label.format(share=share),
            "pairs": n,
            "mean": {k: summary["mean"][k] for k in METRICS},
            "std": {k: summary["std"][k] for k in METRICS},
            "runs": runs[name],
            "roles": roles_mean,
            "hidden_quality": float(np.mean(quality[name])),
        }
        cells = " | ".join(f"{summary['mean'][k]:.3f} ± {summary['std'][k]:.3f}" for k in METRICS)
        print(f"| {label.format(share=share)} | {n} | {np.mean(quality[name]):.3f} | {cells} |")
    print("\nroles in each subset (mean share over seeds):")
    for result in report["results"].values():
        print(f"  {result['label']}: " + ", ".join(f"{r} {v:.0%}" for r, v in result["roles"].items()))
    print(f"chance: R@1 {report['chance']['r1']:.4f}, R@5 {report['chance']['r5']:.4f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    plot(report, args)
    print(f"\nplot: {args.out}; numbers: {args.json}; {time.monotonic() - started:.0f}s in all")


def plot(report: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    width = 0.8 / len(names)
    x = np.arange(len(METRICS))
    colors = {"reward": "black", "clipscore": "tab:blue", "random": "grey", "oracle": "tab:green"}
    for i, name in enumerate(names):
        result = report["results"][name]
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            [result["mean"][k] for k in METRICS],
            width,
            yerr=[result["std"][k] for k in METRICS],
            capsize=3,
            label=f"{result['label']} ({result['pairs']} pairs)",
            color=colors.get(name, "tab:orange"),
            alpha=0.85,
        )
    for k, chance in (("r1", report["chance"]["r1"]), ("r5", report["chance"]["r5"])):
        positions = [i for i, m in enumerate(METRICS) if m.endswith(k)]
        for p in positions:
            ax.hlines(chance, p - 0.45, p + 0.45, colors="red", linestyles=":", linewidth=1)
    ax.set_xticks(x, ["image→text R@1", "image→text R@5", "text→image R@1", "text→image R@5"])
    ax.set_ylabel(f"recall on {report['held_out']} held-out judged-best pairs")
    ax.set_title(
        f"Downstream retrieval by training subset ({report['pool']} pool, {report['seeds']} seeds, "
        f"mean ± sd; red: chance)",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, bbox_inches="tight")


if __name__ == "__main__":
    main()
