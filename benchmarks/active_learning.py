"""Active learning vs random selection, with simulated annotators over the demo pool.

    python benchmarks/active_learning.py [--pool demo|synthetic] [--seeds 5] [--rounds 10] [--batch 20]
    python benchmarks/active_learning.py --combine demo.json synthetic.json   # redraw the figure
    python benchmarks/active_learning.py --scale 100000   # time the default mix on a big campaign

Pool: the demo pool's sources (pool/demo.py: openclipart drawings + packaged photos; captions = title,
description, "clip art of <keywords>", and a hard negative taken from another drawing of the same
category), embedded with the offline encoder (EfficientNet-Lite0 + MiniLM; features cached under
var/benchmarks/). Hidden preference: the demo's truth table (description > title > keywords >
negative, longer descriptions slightly better); annotators judge through training/simulate.py with
Bradley-Terry noise 0.1, one judgment per selected task.

Protocol, identical for every strategy (same seeds, same initial labelled set, same budget): images
are split once into a selection pool (70%) and a held-out test set (30%). Each run starts from the same
random ``--initial`` labelled tasks; each round trains the reward model (training/train.py, the code
the product trains with), scores the unlabelled pool, lets the strategy pick ``--batch`` tasks, has
the simulated annotator judge them, and measures held-out pairwise accuracy against the hidden order.
The batch strategy is told the model's skill as its prequential accuracy: each judged batch against
the model that picked it, pooled over the batches so far (``--skill none``: the label count instead).
Reports, per strategy, accuracy by budget (mean ± std over seeds), the labels needed to reach random
selection's final accuracy (from the mean curves and per seed), and the paired difference to random
at every budget; writes a figure (``--out``; ``--combine`` redraws docs/active_learning.png from the
JSON of a demo and a synthetic run) and the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.active_learning import DEFAULT_MIX, PREVIOUS_MIX, pad_ragged, priorities_mix, strategy_scores  # noqa: E402
from training.simulate import AnnotatorConfig, CaptionInfo, judgment_simulate  # noqa: E402

ENCODER = "offline:effnet-minilm"
CRITERIA = ["accuracy", "completeness"]
STRATEGY_MIXES: dict[str, dict[str, float]] = {
    "random": {"random": 1.0},
    "uncertainty": {"uncertainty": 1.0},
    "margin": {"margin": 1.0},
    "disagreement": {"disagreement": 1.0},
    "diversity": {"diversity": 1.0},
    "old mix": dict(PREVIOUS_MIX),
    "batch": {"batch": 1.0},
    "default mix": dict(DEFAULT_MIX),
}


# --- the pool ------------------------------------------------------------------------------------


def pool_build(cache_dir: Path, clipart: int) -> dict:
    """Demo sources + offline-encoder features, cached as one .npz per size."""
    cache = cache_dir / f"demo-pool-{clipart}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=True)
        return {k: data[k] for k in data.files}
    import hashlib

    from pool.demo import demo_source_build, demo_truth_load
    from scoring.encoders import encoder_load
    from scoring.pipeline import images_embed, texts_embed

    source = cache_dir / f"demo-source-{clipart}"
    started = time.monotonic()
    built = demo_source_build(out_dir=source, clipart_limit=clipart)
    truth_file = Path(built["truth"])
    quality = demo_truth_load(truth_file)
    rows = [json.loads(line) for line in truth_file.read_text().splitlines()]
    images = sorted({r["image"] for r in rows})
    sha = {img: hashlib.sha256((source / img).read_bytes()).hexdigest() for img in images}
    encoder = encoder_load(ENCODER)
    print(
        f"demo sources: {len(images)} images in {time.monotonic() - started:.0f}s; embedding...", flush=True
    )
    img_feats, errors = images_embed(encoder, [str(source / img) for img in images], num_workers=0)
    keep = [i for i in range(len(images)) if i not in errors]
    image_index = {images[i]: n for n, i in enumerate(keep)}
    rows = [r for r in rows if r["image"] in image_index]
    text_feats, _ = texts_embed(encoder, [r["text"] for r in rows])
    out = {
        "image_feats": img_feats[keep].astype(np.float32),
        "text_feats": text_feats.astype(np.float32),
        "row_image": np.array([image_index[r["image"]] for r in rows], np.int64),
        "row_quality": np.array([quality[(sha[r["image"]], r["text"].strip())] for r in rows], np.float64),
        "row_role": np.array([r["role"] for r in rows]),
        "row_text": np.array([r["text"] for r in rows]),
        "image_names": np.array([images[i] for i in keep]),
        "embed_dim": np.array(encoder.embed_dim),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **out)
    print(f"pool built and embedded in {time.monotonic() - started:.0f}s -> {cache}", flush=True)
    return out


def synthetic_pool_data(n_images: int) -> dict:
    """The training helper's synthetic pool (training/synthetic.py): a hidden reward that is part
    image-text agreement, part text style, over random features; quality = sigmoid(reward / std)."""
    from training.synthetic import synthetic_pool

    pool = synthetic_pool(n_images=n_images, captions_per_image=4, embed_dim=32, image_extra=16, seed=7)
    row_image = np.repeat(np.arange(n_images), 4)
    first = np.arange(0, 4 * n_images, 4)
    hidden = pool.hidden_reward / (pool.hidden_reward.std() or 1.0)
    return {
        "image_feats": pool.image_feats[first],
        "text_feats": pool.text_feats,
        "row_image": row_image,
        "row_quality": 1.0 / (1.0 + np.exp(-hidden)),
        "row_role": np.array(["synthetic"] * len(row_image)),
        "row_text": np.array([str(c) for c in pool.caption_ids]),
        "embed_dim": np.array(pool.embed_dim),
    }


class Pool:
    """Tasks = images with two or more candidate captions; a caption's id is its row number."""

    def __init__(self, data: dict):
        self.image_feats = data["image_feats"]
        self.text_feats = data["text_feats"]
        self.row_image = data["row_image"]
        self.quality = data["row_quality"]
        self.roles = data["row_role"]
        self.texts = data["row_text"]
        self.embed_dim = int(data["embed_dim"])
        by_image: dict[int, list[int]] = {}
        for row, image in enumerate(self.row_image):
            by_image.setdefault(int(image), []).append(row)
        self.tasks = [rows for _, rows in sorted(by_image.items()) if len(rows) >= 2]
        self.task_image = [int(self.row_image[rows[0]]) for rows in self.tasks]


# --- one run ---------------------------------------------------------------------------------------


def training_data(pool: Pool, judgments: list) -> object:
    from training.pairs import PairSet, TrainingData, pairs_weighted, pairset_build, rating_targets

    rows = np.arange(len(pool.text_feats))
    train = pairset_build(
        pairs_weighted(judgments, "each"),
        rating_targets(judgments, CRITERIA),
        {int(r): int(r) for r in rows},
        2,
    )
    return TrainingData(
        image_feats=pool.image_feats,
        text_feats=pool.text_feats,
        image_of_row=pool.row_image,
        embed_dim=pool.embed_dim,
        criteria=CRITERIA,
        train=train,
        validation=PairSet.empty(len(CRITERIA)),
        test=None,
    )


def model_outputs(model, pool: Pool, rows: np.ndarray) -> np.ndarray:
    """[E, len(rows)] member rewards."""
    import torch

    with torch.no_grad():
        out = model(
            torch.from_numpy(pool.image_feats[pool.row_image[rows]]), torch.from_numpy(pool.text_feats[rows])
        )
    return out.rewards.numpy()


def accuracy(model, pool: Pool, test_tasks: list[int]) -> float:
    from training.simulate import pairwise_accuracy

    rows = np.concatenate([pool.tasks[t] for t in test_tasks])
    predicted = model_outputs(model, pool, rows).mean(axis=0)
    groups = pool.row_image[rows]
    return pairwise_accuracy(predicted, pool.quality[rows], groups, min_gap=0.02)


def run_strategy(
    pool: Pool, mix: dict, *, train_tasks: list[int], test_tasks: list[int], seed: int, args
) -> list[tuple[int, float]]:
    from training.config import TrainConfig
    from training.train import train

    rng = np.random.default_rng(seed)
    annotator_rng = np.random.default_rng(seed + 1000)  # same judgments for the same task order
    config = AnnotatorConfig(noise=args.noise)
    # Same initial labelled set for every strategy of a seed.
    labelled = list(np.random.default_rng(seed).choice(train_tasks, size=args.initial, replace=False))
    judgments = []

    def judge(task: int) -> None:
        rows = pool.tasks[task]
        captions = [CaptionInfo(int(r), str(pool.texts[r]), "", str(pool.task_image[task])) for r in rows]
        quality = {int(r): float(pool.quality[r]) for r in rows}
        ranking, ratings = judgment_simulate(
            captions=captions,
            criteria=CRITERIA,
            preference=lambda c: quality[c.caption_id],
            config=config,
            rng=annotator_rng,
        )
        from training.pairs import JudgmentRecord

        judgments.append(JudgmentRecord(task, 1, ranking, ratings, str(pool.task_image[task])))

    for task in labelled:
        judge(task)
    curve = []
    # Prequential skill: each batch's judgments against the model that picked it (trained before
    # they existed, so they are held out from it), pooled over the batches so far: the benchmark's
    # stand-in for the held-out accuracy the product's model carries. None until a batch is judged.
    skill = None
    skills: list[float | None] = []
    judged_pairs = [0, 0]  # (agreeing, all) over every batch so far, each against the model that picked it
    tconfig = TrainConfig(epochs=args.epochs, hidden=64, n_heads=5, seed=seed, patience=args.epochs)
    for round_index in range(args.rounds + 1):
        model = train(tconfig, training_data(pool, judgments)).model
        curve.append((len(labelled), accuracy(model, pool, test_tasks)))
        if round_index == args.rounds:
            break
        taken = set(labelled)
        unlabelled = [t for t in train_tasks if t not in taken]
        # One forward over every unlabelled caption, then split back into tasks.
        rows = np.concatenate([pool.tasks[t] for t in unlabelled])
        flat = model_outputs(model, pool, rows)
        bounds = np.cumsum([0] + [len(pool.tasks[t]) for t in unlabelled])
        member = pad_ragged([flat[:, bounds[i] : bounds[i + 1]] for i in range(len(unlabelled))])
        clip = pad_ragged([_clipscore(pool, pool.tasks[t]) for t in unlabelled])
        embeddings = np.stack(
            [pool.image_feats[pool.task_image[t], : pool.embed_dim] for t in unlabelled + labelled]
        )
        round_seed = int(rng.integers(1 << 31))
        # One call, as training/priorities.py makes it: the model's outputs for the unlabelled tasks,
        # image embeddings for them followed by the labelled ones (starting centres).
        scores = strategy_scores(
            member_rewards=member,
            clipscores=clip,
            embeddings=embeddings,
            batch_size=args.batch,
            seed=round_seed,
            labelled=list(range(len(unlabelled), len(embeddings))),
            skill=skill if args.skill == "prequential" else None,
        )
        priorities = priorities_mix(scores, mix, args.batch, seed=round_seed)
        picks = np.argsort(-priorities, kind="stable")[: args.batch]
        chosen = [unlabelled[i] for i in picks]
        predicted = {}
        for i, task in zip(picks, chosen, strict=True):
            mean = flat[:, bounds[i] : bounds[i + 1]].mean(axis=0)
            predicted.update({int(r): float(v) for r, v in zip(pool.tasks[task], mean, strict=True)})
        for task in chosen:
            judge(task)
        agree, total = ranking_agreement(judgments[-len(chosen) :], predicted)
        judged_pairs[0] += agree
        judged_pairs[1] += total
        skill = judged_pairs[0] / judged_pairs[1] if judged_pairs[1] else None
        skills.append(skill)
        labelled.extend(chosen)
    return curve, skills


def ranking_agreement(judgments: list, predicted: dict[int, float]) -> tuple[int, int]:
    """(pairs ``predicted`` orders like the annotator did, judged pairs), tied pairs left out."""
    agree = total = 0
    for j in judgments:
        groups = [[int(c) for c in group] for group in j.ranking]
        for gi, better in enumerate(groups):
            for worse in groups[gi + 1 :]:
                for a in better:
                    for b in worse:
                        total += 1
                        agree += predicted[a] > predicted[b]
    return agree, total


def _clipscore(pool: Pool, rows: list[int]) -> np.ndarray:
    k = pool.embed_dim
    img = pool.image_feats[pool.row_image[rows], :k]
    txt = pool.text_feats[rows, :k]
    cos = (img * txt).sum(1) / np.maximum(np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1), 1e-8)
    return 2.5 * np.maximum(cos, 0.0)


# --- report ----------------------------------------------------------------------------------------


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    for labels, acc in curve:
        if acc >= target:
            return labels
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pool", choices=["demo", "synthetic"], default="demo")
    parser.add_argument("--clipart", type=int, default=600, help="Drawings in the demo pool.")
    parser.add_argument("--images", type=int, default=600, help="Images in the synthetic pool.")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--initial", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument(
        "--skill",
        choices=["prequential", "none"],
        default="prequential",
        help="What the batch strategy is told about the model's accuracy: its accuracy on the "
        "last batch's judgments (judged after it was trained), or nothing (warm-up by label count).",
    )
    parser.add_argument("--verbose", action="store_true", help="Also print the prequential skill per round.")
    parser.add_argument(
        "--strategies",
        default="random,default mix,old mix",
        help=f"Comma-separated, from: {', '.join(STRATEGY_MIXES)}.",
    )
    parser.add_argument(
        "--scale", type=int, metavar="TASKS", help="Only time the default mix on this many random tasks."
    )
    parser.add_argument(
        "--combine", nargs="+", metavar="JSON", help="Only redraw --out from these runs' JSON files."
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "active_learning.png"))
    parser.add_argument("--json", default=str(ROOT / "var" / "benchmarks" / "active_learning.json"))
    args = parser.parse_args()
    if args.combine:
        combine(args.combine, args.out)
        return
    if args.scale:
        scale_check(args.scale)
        return

    import torch

    # One thread: the heads are tiny, and on a shared machine extra OpenMP threads mostly spin.
    torch.set_num_threads(1)
    if args.pool == "demo":
        pool = Pool(pool_build(ROOT / "var" / "benchmarks", args.clipart))
    else:
        pool = Pool(synthetic_pool_data(args.images))
    split_rng = np.random.default_rng(12345)
    order = split_rng.permutation(len(pool.tasks))
    n_test = int(0.3 * len(order))
    test_tasks, train_tasks = sorted(order[:n_test].tolist()), sorted(order[n_test:].tolist())
    roles = {r: int((pool.roles == r).sum()) for r in np.unique(pool.roles)}
    print(
        f"pool: {len(pool.tasks)} tasks ({len(train_tasks)} selectable, {len(test_tasks)} held out), "
        f"{len(pool.texts)} captions {roles}; budget {args.initial} + {args.rounds} x {args.batch} labels, "
        f"{args.seeds} seeds, annotator noise {args.noise}",
        flush=True,
    )
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in STRATEGY_MIXES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGY_MIXES)}")
    curves: dict[str, list[list[tuple[int, float]]]] = {name: [] for name in names}
    started = time.monotonic()
    for seed in range(args.seeds):
        for name in names:
            curve, skills = run_strategy(
                pool,
                STRATEGY_MIXES[name],
                train_tasks=train_tasks,
                test_tasks=test_tasks,
                seed=seed,
                args=args,
            )
            curves[name].append(curve)
            print(
                f"seed {seed} {name:>13}: "
                + " ".join(f"{acc:.3f}" for _, acc in curve)
                + f"  ({time.monotonic() - started:.0f}s)"
                + (
                    "  skill " + " ".join(f"{v:.2f}" for v in skills if v is not None) if args.verbose else ""
                ),
                flush=True,
            )
    labels = [n for n, _ in curves[names[0]][0]]
    report = summarise(labels, {k: [[a for _, a in c] for c in runs] for k, runs in curves.items()})
    report.update(
        {
            "pool": args.pool,
            "pool_size": {"tasks": len(pool.tasks), "selectable": len(train_tasks)},
            "seeds": args.seeds,
            "noise": args.noise,
            "skill_mode": args.skill,
            "seconds": round(time.monotonic() - started),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    )
    print_report(report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    plot([report], args.out)
    print(f"\nplot: {args.out}; numbers: {args.json}; {time.monotonic() - started:.0f}s in all")


def summarise(labels: list[int], acc: dict[str, list[list[float]]]) -> dict:
    """Mean, spread and the comparison with random (paired by seed) of each strategy's curves."""
    runs = {k: np.asarray(v, dtype=np.float64) for k, v in acc.items()}  # [seeds, budgets]
    report: dict = {
        "labels": labels,
        "runs": {k: v.tolist() for k, v in runs.items()},
        "mean": {k: v.mean(axis=0).tolist() for k, v in runs.items()},
        "std": {k: v.std(axis=0).tolist() for k, v in runs.items()},
    }
    if "random" not in runs:
        return report
    rand = runs["random"].mean(axis=0)
    target = float(rand[-1])
    report["random_final"] = target
    report["labels_to_reach_random_final"] = {}
    report["vs_random"] = {}
    for name, v in runs.items():
        mean = v.mean(axis=0)
        report["labels_to_reach_random_final"][name] = labels_to_reach(
            list(zip(labels, mean, strict=True)), target
        )
        diff = v - runs["random"]  # paired: same seed, same initial labels, same test set
        report["vs_random"][name] = {
            "mean": diff.mean(axis=0).tolist(),
            "std": diff.std(axis=0).tolist(),
            # Budgets after the shared initial set at which the mean curve is at least random's.
            "at_least_random_everywhere": bool(np.all(mean[1:] >= rand[1:] - 1e-12)),
            # Per seed: labels to reach that seed's own random final accuracy.
            "labels_to_reach_per_seed": [
                labels_to_reach(list(zip(labels, v[s], strict=True)), float(runs["random"][s, -1]))
                for s in range(len(v))
            ],
        }
    return report


def print_report(report: dict) -> None:
    labels, mean, std = report["labels"], report["mean"], report["std"]
    print("\naccuracy by labels (mean ± std over seeds):\n")
    print("| strategy | " + " | ".join(str(n) for n in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name in mean:
        print(
            f"| {name} | "
            + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[name], std[name], strict=True))
            + " |"
        )
    if "random_final" not in report:
        return
    budget = labels[-1]
    target = report["random_final"]
    print(f"\nrandom's final accuracy: {target:.3f} at {budget} labels")
    print(
        "\n| strategy | final accuracy | labels to reach random's final | share of random's labels "
        "| per seed (own random's final) | ≥ random at every budget | worst budget vs random |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in mean:
        needed = report["labels_to_reach_random_final"][name]
        vs = report["vs_random"][name]
        share = f"{needed / budget:.0%}" if needed is not None else "not reached"
        per_seed = ", ".join(str(x) if x is not None else "–" for x in vs["labels_to_reach_per_seed"])
        diffs = np.asarray(vs["mean"][1:])
        worst = int(np.argmin(diffs)) + 1 if len(diffs) else 0
        print(
            f"| {name} | {mean[name][-1]:.3f} ± {std[name][-1]:.3f} | {needed if needed is not None else '–'} "
            f"| {share} | {per_seed} | {'yes' if vs['at_least_random_everywhere'] else 'no'} "
            f"| {vs['mean'][worst]:+.3f} ± {vs['std'][worst]:.3f} at {labels[worst]} |"
        )


def plot(reports: list[dict], out: str) -> None:
    """One row per pool: accuracy curves (mean ± std over seeds), and each strategy minus random,
    paired by seed (mean ± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(reports), 2, figsize=(12, 4.2 * len(reports)), dpi=110, squeeze=False)
    for row, report in zip(axes, reports, strict=True):
        labels = np.asarray(report["labels"])
        for name in report["mean"]:
            mean, std = np.asarray(report["mean"][name]), np.asarray(report["std"][name])
            style = {"linewidth": 1.4}
            if name == "default mix":
                style = {"linewidth": 2.6, "color": "black"}
            elif name == "random":
                style = {"linewidth": 2.0, "color": "grey", "linestyle": "--"}
            (line,) = row[0].plot(labels, mean, marker="o", markersize=3, label=name, **style)
            style["color"] = line.get_color()  # the shading and the right panel match the line
            row[0].fill_between(labels, mean - std, mean + std, alpha=0.12, color=style["color"])
            if "vs_random" in report and name != "random":
                d = np.asarray(report["vs_random"][name]["mean"])
                ds = np.asarray(report["vs_random"][name]["std"])
                row[1].plot(labels, d, marker="o", markersize=3, label=name, **style)
                row[1].fill_between(labels, d - ds, d + ds, alpha=0.12, color=style["color"])
        if report.get("random_final") is not None:
            row[0].axhline(report["random_final"], color="grey", linewidth=0.8, linestyle=":")
        row[1].axhline(0.0, color="grey", linewidth=1.0, linestyle="--")
        title = f"{report.get('pool', '')} pool, {len(next(iter(report['runs'].values())))} seeds"
        row[0].set_title(f"Held-out pairwise accuracy: {title}")
        row[1].set_title("Minus random, paired by seed (mean ± std)")
        for ax in row:
            ax.set_xlabel("labels (judged tasks)")
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right", fontsize=8)
        row[0].set_ylabel("accuracy vs hidden preference")
        row[1].set_ylabel("accuracy − random's")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def scale_check(tasks: int, labelled: int = 5000, dim: int = 384, batch: int = 100) -> None:
    """Time the default strategy on a campaign-sized candidate set of random inputs (a third of the
    tasks with 3 captions, the rest 4; 5 ensemble members)."""
    import resource

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((tasks + labelled, dim)).astype(np.float32)
    member = rng.standard_normal((tasks, 5, 4))
    member[::3, :, 3] = np.nan
    clip = rng.random((tasks, 4))
    clip[::3, 3] = np.nan
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    scores = strategy_scores(
        member_rewards=member,
        clipscores=clip,
        embeddings=emb,
        batch_size=batch,
        seed=0,
        labelled=list(range(tasks, tasks + labelled)),
        skill=0.8,
        strategies=set(DEFAULT_MIX) | {"random"},
    )
    priorities_mix({k: v[:tasks] for k, v in scores.items()}, DEFAULT_MIX, batch)
    print(
        f"{tasks:,} open + {labelled:,} labelled tasks, {dim}-dim embeddings, batch {batch}: default mix "
        f"{time.perf_counter() - started:.1f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
        f"({before:.0f} MiB with the inputs alone); load average {os.getloadavg()[0]:.1f}"
    )


def combine(paths: list[str], out: str) -> None:
    """Redraw the figure from the JSON of earlier runs (e.g. the demo and the synthetic pool)."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    for report in reports:
        print(
            f"\n## {report.get('pool')} pool ({report.get('seconds')} s, load {report.get('load_average')})"
        )
        print_report(report)
    plot(reports, out)
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
