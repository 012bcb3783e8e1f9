#!/usr/bin/env python
"""Benchmark: learning curves of the reward model on the demo pool with simulated annotators.

    python benchmarks/learning_curves.py [--budgets 200,800,2000] [--seeds 5] [--threads 1]
                                         [--no-finetune] [--plot docs/learning_curves.png]

The demo pool of ``benchmarks/training.py --demo`` (800 openclipart drawings plus the packaged photos,
up to four real candidate captions per image; offline-encoder features cached under benchmarks/out/)
and its simulated annotators (``training/simulate.py``, Bradley-Terry temperature ``--annotator-noise``
on the demo's truth: description > title > keywords > another drawing's title).

- **Held out, the same for every budget, seed and scorer**: the test images of the hash split
  (``training.pairs.image_split``), each judged by three simulated annotators (one fixed seed). The human
  ceiling is one of them against the other two (``training.pairs.human_agreement``).
- **Training budget** B judgments, per seed: the other images (train and validation by the same hash) in
  a seeded random order, one judgment per image per pass, until B judgments (200: a third of the images
  judged once; 2,000: every image three or four times).
- **Scorers**, all on the same held-out pairs: frozen heads (``training.train.train``, default
  ``TrainConfig``) on the cached features; the fine-tuned encoder + heads (``training.finetune.finetune``,
  config from the flags; default below); CLIPScore of the offline encoder; the human ceiling.
  Also, as what limits them: the held-out accuracy of the demo's hidden truth itself (an oracle that
  knows every caption's quality), and of a text-only oracle that knows every caption's role except
  that it cannot tell a drawing's own title from another drawing's title (the hard negative).
- Accuracy is broken down by pair type (description / title / keywords / negative) for every scorer.

Writes ``benchmarks/out/learning_curves.json`` (every run) and a PNG plot (mean ± std over seeds).
Each training runs in this process, one after the other, with ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.training import DEMO_CRITERIA, _demo_features, demo_images, demo_judgments  # noqa: E402

ROLE_ORDER = ("description", "title", "keywords", "negative")
# Photos are few and their "photo_caption" plays the description's part.
ROLE_ALIAS = {"photo_caption": "description"}


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _pair_types(data, pairset, roles: list[str]) -> list[str]:
    """'description/title' style label of each pair (roles in ROLE_ORDER order)."""
    out = []
    for a, b in zip(pairset.a, pairset.b, strict=True):
        ra, rb = (ROLE_ALIAS.get(roles[int(r)], roles[int(r)]) for r in (a, b))
        first, second = sorted((ra, rb), key=ROLE_ORDER.index)
        out.append(f"{first}/{second}")
    return out


def _accuracy_by_type(score_a, score_b, pairset, types: list[str]) -> dict[str, float | None]:
    import numpy as np

    from training.evaluate import pairwise_accuracy

    types_arr = np.asarray(types)
    out = {}
    for t in sorted(set(types)):
        mask = types_arr == t
        acc = pairwise_accuracy(score_a[mask], score_b[mask], pairset.target[mask])
        out[t] = None if acc != acc else round(acc, 4)
    return out


def _model_scores(model, data, pairset):
    import numpy as np

    from training.evaluate import predict_rows

    rows = np.unique(np.concatenate([pairset.a, pairset.b]))
    reward = predict_rows(model, data, rows)["reward"]
    pos = {int(r): i for i, r in enumerate(rows)}
    ia = np.array([pos[int(r)] for r in pairset.a])
    ib = np.array([pos[int(r)] for r in pairset.b])
    return reward[ia], reward[ib]


def _oracles(data, pairset, roles, qualities, types) -> dict:
    """Held-out accuracy of the hidden truth, and of the best text-only scorer (roles known, but a drawing's
    own title and another drawing's title look alike: both get the mean of their two qualities)."""
    import numpy as np

    from pool.demo import ROLE_QUALITY
    from training.evaluate import pairwise_accuracy

    q = np.asarray(qualities, np.float64)
    blind = ROLE_QUALITY.copy()
    blind["title"] = blind["negative"] = (ROLE_QUALITY["title"] + ROLE_QUALITY["negative"]) / 2
    text_only = np.array([blind[r] for r in roles], np.float64)
    out = {}
    for name, s in (("truth_oracle", q), ("text_only_oracle", text_only)):
        sa, sb = s[pairset.a], s[pairset.b]
        out[name] = {
            "accuracy": round(pairwise_accuracy(sa, sb, pairset.target), 4),
            "by_type": _accuracy_by_type(sa, sb, pairset, types),
        }
    return out


def _one_run(args, budget: int, seed: int, ctx: dict, tmp: Path) -> dict:
    import numpy as np
    import torch

    from training.config import TrainConfig
    from training.evaluate import clipscore, reward_model_evaluate
    from training.finetune import FinetuneConfig, finetune, finetune_data_build
    from training.pairs import training_data_build
    from training.train import train

    rng = np.random.default_rng(1_000 * seed + budget)
    order = list(ctx["train_images"])
    rng.shuffle(order)
    records = demo_judgments(
        ctx["by_image"],
        ctx["qualities"],
        noise=args.annotator_noise,
        rounds=1,
        rng=rng,
        images=order,
        budget=budget,
    )
    judged_images = len({r.image_key for r in records})
    all_records = records + ctx["test_records"]
    common = dict(
        judgments=all_records,
        caption_ids=ctx["caption_ids"],
        row_image_keys=ctx["keys"],
        criteria=list(DEMO_CRITERIA),
    )
    data = training_data_build(
        image_feats=ctx["image_feats"], text_feats=ctx["text_feats"], embed_dim=ctx["embed_dim"], **common
    )
    test = data.test
    types = _pair_types(data, test, ctx["roles"])
    run = {
        "budget": budget,
        "seed": seed,
        "judgments": len(records),
        "judged_images": judged_images,
        "pairs_train": data.train.n_pairs,
        "pairs_validation": data.validation.n_pairs if data.validation is not None else 0,
        "pairs_test": test.n_pairs,
        "load_average_before": _load_average(),
    }
    k = data.embed_dim
    img_a, txt_a = data.rows(test.a)
    img_b, txt_b = data.rows(test.b)
    run["clipscore_by_type"] = _accuracy_by_type(
        clipscore(img_a[:, :k], txt_a[:, :k]), clipscore(img_b[:, :k], txt_b[:, :k]), test, types
    )

    torch.manual_seed(seed)
    frozen = train(TrainConfig(seed=seed), data)
    report = reward_model_evaluate(frozen.model, data, test)
    run["frozen"] = {
        "accuracy": report["accuracy"],
        "train_s": round(frozen.seconds, 2),
        "epochs_run": len(frozen.history),
        "by_type": _accuracy_by_type(*_model_scores(frozen.model, data, test), test, types),
    }
    run["clipscore"] = report["clipscore_accuracy"]

    if not args.no_finetune and seed < (args.ft_seeds or args.seeds):
        fdata = finetune_data_build(
            row_images=ctx["row_images"], texts=ctx["texts"], min_judgments=30, campaign="demo", **common
        )
        config = FinetuneConfig(
            encoder="offline:effnet-minilm",
            output_dir=str(tmp),
            run_name=f"b{budget}-s{seed}",
            mode=args.ft_mode,
            towers=tuple(args.ft_towers.split(",")),
            blocks=args.ft_blocks,
            epochs=args.ft_epochs,
            batch_size=args.ft_batch_size,
            encoder_lr=args.ft_encoder_lr,
            head_lr=args.ft_head_lr,
            patience=args.ft_patience,
            seed=seed,
            device="cpu",
        )
        result = finetune(config, fdata)
        rep = result.test_report or {}
        run["finetuned"] = {
            "accuracy": rep.get("accuracy"),
            "clipscore_on_new_encoder": rep.get("clipscore_accuracy"),
            "s_total": round(result.seconds, 1),
            "s_per_epoch": round(sum(result.epoch_seconds) / max(1, len(result.epoch_seconds)), 2),
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "peak_rss_mb": result.peak_memory_mb,
            "trainable_parameters": result.trainable_parameters,
            "val_accuracy": [r.get("val_accuracy") for r in result.history],
        }
        if result.test_data is not None:
            ftest = result.test_data.test
            run["finetuned"]["by_type"] = _accuracy_by_type(
                *_model_scores(result.model, result.test_data, ftest), ftest, types
            )
        for path in tmp.iterdir():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    run["load_average_after"] = _load_average()
    return run


def _summary(runs: list[dict], key: str) -> dict[int, dict]:
    import numpy as np

    out = {}
    for budget in sorted({r["budget"] for r in runs}):
        values = [
            (r[key]["accuracy"] if isinstance(r.get(key), dict) else r.get(key))
            for r in runs
            if r["budget"] == budget
        ]
        values = [v for v in values if v is not None]
        if values:
            out[budget] = {
                "mean": round(float(np.mean(values)), 4),
                "std": round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 4),
                "n": len(values),
            }
    return out


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    budgets = sorted(int(b) for b in report["summary"]["frozen"])  # str keys after a JSON round trip
    for key, label, style in (
        ("finetuned", "fine-tuned encoder + heads", "o-"),
        ("frozen", "frozen heads (cached features)", "s-"),
    ):
        s = report["summary"].get(key) or {}
        xs = [b for b in budgets if b in s or str(b) in s]
        if not xs:
            continue
        m = [(s.get(b) or s.get(str(b)))["mean"] for b in xs]
        e = [(s.get(b) or s.get(str(b)))["std"] for b in xs]
        ax.errorbar(xs, m, yerr=e, fmt=style, capsize=4, label=label)
    ax.axhline(report["human_ceiling"], color="k", ls="--", lw=1, label="human ceiling (simulated)")
    ax.axhline(report["clipscore"], color="tab:red", ls=":", lw=1.5, label="CLIPScore (offline encoder)")
    ax.axhline(
        report["oracles"]["text_only_oracle"]["accuracy"],
        color="tab:gray",
        ls="-.",
        lw=1,
        label="text-only oracle (cannot tell title from negative)",
    )
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(budgets)
    ax.set_xticklabels([f"{b:,}" for b in budgets])
    ax.set_xlabel("training judgments (simulated annotators)")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_ylim(0.4, 1.0)
    seeds = {
        key: max((v["n"] for v in (report["summary"].get(key) or {}).values()), default=0)
        for key in ("frozen", "finetuned")
    }
    ax.set_title(
        f"Reward model learning curves, demo pool (mean ± std over seeds: frozen {seeds['frozen']}, "
        f"fine-tuned {seeds['finetuned']})",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", default="200,800,2000")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--demo", type=int, default=800, help="drawings in the demo pool")
    parser.add_argument("--annotator-noise", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-finetune", action="store_true", help="frozen heads and baselines only")
    parser.add_argument(
        "--ft-seeds",
        type=int,
        default=0,
        help="fine-tune only the first N seeds (0: all); frozen heads run all",
    )
    parser.add_argument("--ft-mode", default="last_blocks")
    parser.add_argument("--ft-towers", default="image,text")
    parser.add_argument("--ft-blocks", type=int, default=2)
    parser.add_argument("--ft-epochs", type=int, default=5)
    parser.add_argument("--ft-batch-size", type=int, default=64)
    parser.add_argument("--ft-encoder-lr", type=float, default=None)
    parser.add_argument("--ft-head-lr", type=float, default=1e-3)
    parser.add_argument("--ft-patience", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "learning_curves.json"))
    parser.add_argument("--plot", default=str(REPO / "docs" / "learning_curves.png"))
    parser.add_argument("--replot", default="", help="only draw the plot again from this JSON report")
    args = parser.parse_args()
    if args.replot:
        _plot(json.loads(Path(args.replot).read_text()), Path(args.plot))
        return

    import numpy as np
    import torch

    from training.pairs import human_agreement, image_split, training_data_build

    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    started = datetime.now(UTC)
    t_all = time.perf_counter()
    demo_dir = REPO / "benchmarks" / "out" / f"demo-{args.demo}"
    items, keys, qualities, image_feats, text_feats, embed_dim = _demo_features(
        args.demo, REPO / "benchmarks" / "out"
    )
    by_image = demo_images(keys)
    test_images = [k for k in by_image if image_split(k) == "test"]
    train_images = [k for k in by_image if image_split(k) != "test" and len(by_image[k]) >= 2]
    # One fixed set of held-out judgments for every budget, seed and scorer.
    test_records = demo_judgments(
        by_image,
        qualities,
        noise=args.annotator_noise,
        rounds=3,
        rng=np.random.default_rng(12_345),
        images=test_images,
    )
    ceiling, ceiling_pairs = human_agreement(test_records)
    ctx = {
        "by_image": by_image,
        "qualities": qualities,
        "keys": keys,
        "caption_ids": list(range(1, len(keys) + 1)),
        "roles": [role for _, _, role in items],
        "texts": [text for _, text, _ in items],
        "row_images": [demo_dir / image for image, _, _ in items],
        "image_feats": image_feats,
        "text_feats": text_feats,
        "embed_dim": embed_dim,
        "train_images": train_images,
        "test_records": test_records,
    }
    test_data = training_data_build(
        judgments=test_records,
        caption_ids=ctx["caption_ids"],
        row_image_keys=keys,
        image_feats=image_feats,
        text_feats=text_feats,
        embed_dim=embed_dim,
        criteria=list(DEMO_CRITERIA),
    )
    types = _pair_types(test_data, test_data.test, ctx["roles"])
    oracles = _oracles(test_data, test_data.test, ctx["roles"], qualities, types)
    type_counts = {t: types.count(t) for t in sorted(set(types))}
    print(
        json.dumps(
            {
                "images_train_pool": len(train_images),
                "images_test": len(test_images),
                "test_pairs": test_data.test.n_pairs,
                "human_ceiling": ceiling,
                "oracles": oracles,
                "pair_types": type_counts,
            }
        ),
        flush=True,
    )
    runs = []
    tmp = Path(tempfile.mkdtemp(prefix="loupe-curves-"))
    try:
        for budget in budgets:
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                run = _one_run(args, budget, seed, ctx, tmp)
                run["wall_s"] = round(time.perf_counter() - t0, 1)
                runs.append(run)
                print(json.dumps(run), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by_type = defaultdict(dict)
    for key in ("frozen", "finetuned"):
        for budget in budgets:
            rows = [r[key]["by_type"] for r in runs if r["budget"] == budget and "by_type" in r.get(key, {})]
            if rows:
                by_type[key][budget] = {
                    t: round(float(np.mean([r[t] for r in rows if r.get(t) is not None])), 4)
                    for t in type_counts
                }
    report = {
        "date": started.isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, 2 CPU cores shared with other engineers, Python "
        f"{platform.python_version()}, torch {torch.__version__}, {args.threads} thread(s)",
        "args": vars(args),
        "wall_s": round(time.perf_counter() - t_all, 1),
        "seeds": args.seeds,
        "budgets": budgets,
        "images_train_pool": len(train_images),
        "images_test": len(test_images),
        "test_pairs": test_data.test.n_pairs,
        "pair_types": type_counts,
        "human_ceiling": ceiling,
        "human_ceiling_pairs": ceiling_pairs,
        "clipscore": runs[0]["clipscore"] if runs else None,
        "clipscore_by_type": runs[0]["clipscore_by_type"] if runs else None,
        "oracles": oracles,
        "summary": {"frozen": _summary(runs, "frozen"), "finetuned": _summary(runs, "finetuned")},
        "by_type": by_type,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.plot and runs:
        _plot(report, Path(args.plot))
    print()
    print(f"Measured {report['date']} ({report['wall_s']} s) on {report['machine']}.")
    print("| judgments | frozen heads | fine-tuned | CLIPScore | human ceiling |")
    print("|---:|---|---|---:|---:|")
    for budget in budgets:
        cells = []
        for key in ("frozen", "finetuned"):
            s = report["summary"][key].get(budget)
            cells.append(f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})" if s else "not run")
        print(f"| {budget:,} | {cells[0]} | {cells[1]} | {report['clipscore']:.3f} | {ceiling:.3f} |")


if __name__ == "__main__":
    main()
