"""Does a filter run's subset make better training data? DataComp's question, at a small scale.

``filter_run_downstream_evaluate`` trains the same small image-text model (``training/downstream.py``:
frozen cached features, two projections, CLIP's loss) on three training sets and measures zero-shot
retrieval on one held-out set:

- ``kept``: the run's kept pairs;
- ``random``: a random sample of the usable pool of the same size (the baseline a filter must beat);
- ``pool``: the whole usable pool, the set the run chose from (sampled down to ``pool_cap`` pairs when
  larger: the features of every training pair are held in memory, and the model's fixed budget sees
  at most ``steps * batch_size`` samples anyway).

Every set gets the same model, seed, number of steps and batch size (DataComp fixes the samples seen,
not the epochs), so a bigger set is not favoured by more updates and a smaller one is repeated more.

Held-out set: the pairs people judged best, i.e. the top-ranked caption of each judged task (mean tier
over its judgments), one per image. When fewer than ``min_held_out`` such pairs exist it is topped up
with a proxy, and the result says how many of each: for a sample of other pool images, the caption
the run's encoder agrees with most (highest cosine). The proxy favours CLIPScore-like filters; judge
more tasks to remove it. Every caption of a held-out image is excluded from all three training sets
(the split is by image, as in the reward model's own evaluation), and so is every pair of another image
whose caption text is a held-out caption's (a reused title, a hard negative), so no model has seen
either half of a held-out pair.

Runs ``seeds`` times (seed = model init, batch order and the random sample) and stores mean and spread
on ``run.summary["downstream"]``; exports copy it into their manifest. Worker-side: imports torch
lazily, so this module stays importable by the web tier.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotate.models import Judgment
from curate.filtering import FilterRule, filter_plan, filter_run_kept_ids, stream_rows
from curate.models import FilterRun
from pool.models import Caption, CaptionStatus, ImageStatus, RunStatus
from scoring.models import Score

logger = logging.getLogger(__name__)

# Largest training set evaluated: above it, the kept set and the pool are random samples of this size.
# 10,000 pairs of the offline encoder's features (1664 + 384 float32 columns) are about 80 MB each.
DEFAULT_POOL_CAP = 10_000
# Retrieval over N candidates: more pairs make recall@k harder and its estimate steadier.
DEFAULT_HELD_OUT_MAX = 1_000
# Below this many judged-best pairs, recall@1 moves in steps of over 1% and is topped up by the proxy.
DEFAULT_MIN_HELD_OUT = 100
# A queued or running evaluation older than this is taken to have died with its worker.
STALE_AFTER = timedelta(hours=1)
FEATURE_CHUNK = 4096
SUBSET_LABELS = {
    "kept": "filter run's kept pairs",
    "random": "random pairs, same number",
    "pool": "whole usable pool",
}


class DownstreamError(ValueError):
    """The run cannot be evaluated; the message says why in words a curator understands."""


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


# --- the held-out set ---------------------------------------------------------------------------------


def judged_best_captions() -> dict[int, int]:
    """``{image id: caption id}``: for each judged task, the caption its judgments ranked best (lowest
    mean tier; ties go to the caption more judgments put first, then the lower id). An image judged in
    several tasks keeps its earliest task's best caption."""
    rows = Judgment.objects.order_by("task_id", "id").values_list("task_id", "task__image_id", "ranking")
    best: dict[int, int] = {}
    current_task, current_image = None, None
    tiers: dict[int, list[int]] = {}

    def close() -> None:
        if current_task is None or not tiers or current_image in best:
            return
        ranked = min(tiers, key=lambda c: (np.mean(tiers[c]), -tiers[c].count(0), c))
        best[current_image] = ranked

    for task_id, image_id, ranking in rows.iterator(chunk_size=2000):
        if task_id != current_task:
            close()
            current_task, current_image, tiers = task_id, image_id, {}
        for position, tier in enumerate(ranking or []):
            for caption in tier:
                tiers.setdefault(int(caption), []).append(position)
    close()
    return best


@dataclass
class HeldOut:
    caption_ids: np.ndarray  # one caption per image, sorted by caption id
    image_ids: np.ndarray  # every image behind them (excluded from training)
    judged: int  # pairs that are a judged task's best caption
    proxy: int  # pairs chosen by the proxy (highest cosine of an unjudged image)

    @property
    def source(self) -> str:
        if self.proxy and self.judged:
            return "judgments+proxy"
        return "proxy" if self.proxy else "judgments"


def _usable(caption_ids) -> dict[int, int]:
    """``{caption id: image id}`` of the usable captions among ``caption_ids``."""
    out: dict[int, int] = {}
    ids = list(caption_ids)
    for start in range(0, len(ids), FEATURE_CHUNK):
        out.update(
            Caption.objects.filter(
                id__in=ids[start : start + FEATURE_CHUNK],
                status=CaptionStatus.OK,
                image__status=ImageStatus.OK,
            ).values_list("id", "image_id")
        )
    return out


def _best_cosine_captions(*, encoder: str, pool_ids: np.ndarray, pool_images: np.ndarray, images) -> list:
    """For each of ``images``, its pool caption with the highest cosine under ``encoder``."""
    wanted = np.isin(pool_images, np.asarray(list(images), dtype=np.int64))
    candidates = pool_ids[wanted].tolist()
    image_of = dict(zip(candidates, pool_images[wanted].tolist(), strict=True))
    cosine: dict[int, float] = {}
    for start in range(0, len(candidates), FEATURE_CHUNK):
        cosine.update(
            Score.objects.filter(
                encoder=encoder,
                caption_id__in=candidates[start : start + FEATURE_CHUNK],
                cosine__isnull=False,
            ).values_list("caption_id", "cosine")
        )
    best: dict[int, tuple[float, int]] = {}
    for cid in candidates:
        key = (cosine.get(cid, -2.0), -cid)
        if image_of[cid] not in best or key > best[image_of[cid]]:
            best[image_of[cid]] = key
    return sorted(-cid for _, cid in best.values())


def held_out_build(
    *, encoder: str, pool_ids: np.ndarray, pool_images: np.ndarray, min_pairs: int, max_pairs: int
) -> HeldOut:
    """Judged-best pairs (at most ``max_pairs``, a fixed sample so every run of the same judgments is
    measured on the same pairs), topped up to ``min_pairs`` by the proxy when judgments are too few."""
    best = judged_best_captions()
    usable = _usable(best.values())
    judged = sorted(usable)
    if len(judged) > max_pairs:
        judged = sorted(np.random.default_rng(0).choice(judged, size=max_pairs, replace=False).tolist())
    images = {usable[c] for c in judged}
    proxy: list[int] = []
    if len(judged) < min_pairs:
        unjudged = np.setdiff1d(np.unique(pool_images), np.fromiter(images, np.int64, len(images)))
        take = min(min_pairs - len(judged), len(unjudged))
        chosen = np.random.default_rng(0).choice(unjudged, size=take, replace=False) if take else []
        proxy = _best_cosine_captions(
            encoder=encoder, pool_ids=pool_ids, pool_images=pool_images, images=chosen
        )
        images |= {int(i) for i in chosen}
    return HeldOut(
        caption_ids=np.array(sorted(judged + proxy), dtype=np.int64),
        image_ids=np.array(sorted(images), dtype=np.int64),
        judged=len(judged),
        proxy=len(proxy),
    )


# --- the training sets ----------------------------------------------------------------------------------


@dataclass
class DownstreamPlan:
    """Caption ids of the held-out set and of every training set, before features are read."""

    held_out: HeldOut
    kept: np.ndarray  # the run's kept pairs, held-out images removed (sampled to the cap)
    pool: np.ndarray  # the usable pool, held-out images removed, in a fixed random order (to the cap)
    kept_total: int  # kept pairs outside held-out images, before the cap
    pool_total: int  # usable pairs outside held-out images, before the cap
    same_text: int = 0  # captions of other images excluded for sharing a held-out caption's text
    notes: list[str] = field(default_factory=list)

    def random_subset(self, *, size: int, seed: int, available: np.ndarray | None = None) -> np.ndarray:
        """A seeded random sample of the pool of ``size`` pairs (a sample of the pool sample is a
        random sample of the pool)."""
        source = self.pool if available is None else available
        rng = np.random.default_rng(10_000 + seed)
        return np.sort(rng.choice(source, size=min(size, len(source)), replace=False))


def same_text_captions(caption_ids: np.ndarray) -> np.ndarray:
    """Every caption, on any image, whose text is one of ``caption_ids``' texts (sorted ids). A held-out
    caption's text paired with another image (a reused title, a hard negative) is excluded from
    training too, so neither half of a held-out pair was seen in training."""
    ids = [int(c) for c in caption_ids]
    hashes: set[str] = set()
    for start in range(0, len(ids), FEATURE_CHUNK):
        hashes.update(
            Caption.objects.filter(id__in=ids[start : start + FEATURE_CHUNK]).values_list(
                "text_sha256", flat=True
            )
        )
    ordered, found = sorted(hashes), []
    for start in range(0, len(ordered), FEATURE_CHUNK):
        found.extend(
            Caption.objects.filter(text_sha256__in=ordered[start : start + FEATURE_CHUNK]).values_list(
                "id", flat=True
            )
        )
    return np.unique(np.array(found, dtype=np.int64))


def _images_of(caption_ids: np.ndarray, pool_ids: np.ndarray, pool_images: np.ndarray) -> np.ndarray:
    """Image id of each caption (-1 for one that no longer exists): looked up in the sorted pool
    arrays, and in the database for kept pairs that left the pool since the run (a curator decision, a
    cleaning pass), which are still the run's subset."""
    position = np.minimum(np.searchsorted(pool_ids, caption_ids), max(len(pool_ids) - 1, 0))
    found = pool_ids[position] == caption_ids if len(pool_ids) else np.zeros(len(caption_ids), bool)
    images = np.where(found, pool_images[position] if len(pool_ids) else -1, -1).astype(np.int64)
    missing = caption_ids[~found].tolist()
    for start in range(0, len(missing), FEATURE_CHUNK):
        rows = Caption.objects.filter(id__in=missing[start : start + FEATURE_CHUNK]).values_list(
            "id", "image_id"
        )
        for caption_id, image_id in rows:
            images[np.searchsorted(caption_ids, caption_id)] = image_id
    return images


def pool_pairs(*, run: FilterRun) -> tuple[np.ndarray, np.ndarray]:
    """(caption ids, image ids) of the usable pool the run chose from (its rule's ``considered`` set,
    as it is now), sorted by caption id."""
    plan = filter_plan(
        encoder=run.encoder,
        reward_model_version=run.reward_model_version,
        rule=FilterRule.from_dict(run.rule),
    )
    ids, images = [], []
    for rows in stream_rows(plan.considered.order_by(), ("id", "image_id")):
        block = np.array(rows, dtype=np.int64).reshape(-1, 2)
        ids.append(block[:, 0])
        images.append(block[:, 1])
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    caption_ids, image_ids = np.concatenate(ids), np.concatenate(images)
    order = np.argsort(caption_ids)
    return caption_ids[order], image_ids[order]


def downstream_plan(
    *,
    run: FilterRun,
    pool_cap: int | None = None,
    held_out_max: int | None = None,
    min_held_out: int | None = None,
) -> DownstreamPlan:
    if run.status != RunStatus.SUCCEEDED:
        raise DownstreamError(f"Filter run {run.pk} is {run.status}: only a finished run can be evaluated.")
    pool_cap = pool_cap or _setting("LOUPE_DOWNSTREAM_POOL_CAP", DEFAULT_POOL_CAP)
    held_out_max = held_out_max or _setting("LOUPE_DOWNSTREAM_HELD_OUT_MAX", DEFAULT_HELD_OUT_MAX)
    min_held_out = min_held_out or _setting("LOUPE_DOWNSTREAM_MIN_HELD_OUT", DEFAULT_MIN_HELD_OUT)
    pool_ids, pool_images = pool_pairs(run=run)
    held_out = held_out_build(
        encoder=run.encoder,
        pool_ids=pool_ids,
        pool_images=pool_images,
        min_pairs=min_held_out,
        max_pairs=held_out_max,
    )
    notes = []
    if held_out.proxy:
        notes.append(
            f"Only {held_out.judged} judged-best pairs: {held_out.proxy} held-out pairs are a proxy (the "
            f"highest-cosine caption of unjudged images), which favours CLIPScore-like filters. Judge more "
            "tasks for a human-grounded held-out set."
        )
    same_text = same_text_captions(held_out.caption_ids)
    other_images = ~np.isin(pool_images, held_out.image_ids)
    shares_text = np.isin(pool_ids, same_text)
    pool_train = pool_ids[other_images & ~shares_text]
    kept_all = np.unique(filter_run_kept_ids(run=run).astype(np.int64))
    kept_images = _images_of(kept_all, pool_ids, pool_images)
    kept = kept_all[
        (kept_images >= 0) & ~np.isin(kept_images, held_out.image_ids) & ~np.isin(kept_all, same_text)
    ]
    kept_total, pool_total = len(kept), len(pool_train)
    if kept_total > pool_cap:
        kept = np.sort(np.random.default_rng(0).choice(kept, size=pool_cap, replace=False))
        notes.append(
            f"The kept set ({kept_total:,} pairs) is evaluated on a random {pool_cap:,}-pair sample."
        )
    pool_order = np.random.default_rng(1).permutation(pool_train)
    if pool_total > pool_cap:
        notes.append(
            f"The whole pool ({pool_total:,} usable pairs) is evaluated on a random {pool_cap:,}-pair sample "
            "(LOUPE_DOWNSTREAM_POOL_CAP): every pair's features are held in memory while training."
        )
    return DownstreamPlan(
        held_out=held_out,
        kept=kept,
        # Room for pairs without features: the first ``pool_cap`` that have them are used.
        pool=pool_order[: int(pool_cap * 1.05) + 50],
        kept_total=kept_total,
        pool_total=pool_total,
        same_text=int((other_images & shares_text).sum()),
        notes=notes,
    )


# --- features and the evaluation ------------------------------------------------------------------------


def _features(encoder: str, caption_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image features, text features, caption ids) of the readable pairs among ``caption_ids``."""
    from scoring.features import caption_features

    images, texts, ids = [], [], []
    for start in range(0, len(caption_ids), FEATURE_CHUNK):
        chunk = [int(c) for c in caption_ids[start : start + FEATURE_CHUNK]]
        image, text, got = caption_features(encoder=encoder, caption_ids=chunk)
        images.append(np.asarray(image, np.float32))
        texts.append(np.asarray(text, np.float32))
        ids.extend(int(c) for c in got)
    if not ids:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(texts), np.array(ids, dtype=np.int64)


def _store(run_id: int, value: dict) -> None:
    """Set ``summary["downstream"]`` without losing a key another writer set meanwhile."""
    with transaction.atomic():
        run = FilterRun.objects.select_for_update().get(pk=run_id)
        run.summary = {**(run.summary or {}), "downstream": value}
        run.save(update_fields=["summary"])


def filter_run_downstream_queue(*, run: FilterRun, seeds: int = 3) -> bool:
    """Mark the run's evaluation as queued; False when one is already queued or running (and fresh)."""
    if run.status != RunStatus.SUCCEEDED:
        raise DownstreamError(f"Filter run {run.pk} is {run.status}: only a finished run can be evaluated.")
    current = (run.summary or {}).get("downstream") or {}
    since = current.get("updated_at")
    busy = current.get("status") in ("queued", "running") and since
    if busy and timezone.now() - datetime.fromisoformat(since) < STALE_AFTER:
        return False
    _store(run.pk, {"status": "queued", "seeds": seeds, "updated_at": timezone.now().isoformat()})
    return True


def filter_run_downstream_evaluate(
    *,
    run: FilterRun,
    seeds: int = 3,
    config: dict | None = None,
    pool_cap: int | None = None,
    held_out_max: int | None = None,
    min_held_out: int | None = None,
) -> dict:
    """Train the downstream model on the run's kept pairs, a same-size random sample and the whole pool,
    ``seeds`` times each, and store retrieval recall@1/5 (mean and spread) on ``run.summary["downstream"]``.

    ``config``: ``training.downstream.DownstreamConfig`` fields (steps, batch_size, proj_dim, ...)."""
    from training.downstream import METRICS, DownstreamConfig, config_dict, metrics_summary, subset_evaluate

    if seeds < 1:
        raise DownstreamError("seeds must be at least 1.")
    started = time.perf_counter()
    _store(run.pk, {"status": "running", "seeds": seeds, "updated_at": timezone.now().isoformat()})
    try:
        base = DownstreamConfig(**(config or {}))
        plan = downstream_plan(
            run=run, pool_cap=pool_cap, held_out_max=held_out_max, min_held_out=min_held_out
        )
        cap = pool_cap or _setting("LOUPE_DOWNSTREAM_POOL_CAP", DEFAULT_POOL_CAP)
        wanted = np.unique(np.concatenate([plan.held_out.caption_ids, plan.kept, plan.pool]))
        image_feats, text_feats, have = _features(run.encoder, wanted)
        row_of = {int(c): i for i, c in enumerate(have.tolist())}

        def rows(ids: np.ndarray) -> np.ndarray:
            return np.array([row_of[int(c)] for c in ids if int(c) in row_of], dtype=np.int64)

        test_rows = rows(plan.held_out.caption_ids)
        kept_rows = rows(plan.kept)
        pool_available = np.array([c for c in plan.pool.tolist() if c in row_of], dtype=np.int64)
        pool_rows = rows(np.sort(pool_available[:cap]))
        if len(test_rows) < 2:
            raise DownstreamError(
                f"Only {len(test_rows)} held-out pairs have features for {run.encoder}: judge tasks (or score "
                "the pool) so there is something to retrieve."
            )
        if len(kept_rows) < 2:
            raise DownstreamError(
                f"Filter run {run.pk} keeps {len(kept_rows)} pairs with features outside the held-out images: "
                "too few to train on."
            )
        notes = list(plan.notes)
        unread = len(wanted) - len(have)
        if unread:
            notes.append(f"{unread} pairs without readable features were left out.")
        runs: dict[str, list[dict]] = {name: [] for name in SUBSET_LABELS}
        sizes: dict[str, int] = {}
        test_image, test_text = image_feats[test_rows], text_feats[test_rows]
        for seed in range(seeds):
            seeded = replace(base, seed=base.seed + seed)
            random_rows = rows(plan.random_subset(size=len(kept_rows), seed=seed, available=pool_available))
            for name, train_rows in (("kept", kept_rows), ("random", random_rows), ("pool", pool_rows)):
                sizes[name] = len(train_rows)
                runs[name].append(
                    subset_evaluate(
                        seeded, image_feats[train_rows], text_feats[train_rows], test_image, test_text
                    )
                )
        n_test = len(test_rows)
        subsets = {}
        for name, label in SUBSET_LABELS.items():
            summary = metrics_summary(runs[name])
            subsets[name] = {
                "label": label,
                "pairs": sizes[name],
                "mean": {k: summary["mean"][k] for k in METRICS},
                "std": {k: summary["std"][k] for k in METRICS},
                "runs": [{k: r[k] for k in (*METRICS, "final_loss")} for r in runs[name]],
            }
        subsets["pool"]["total"] = plan.pool_total
        subsets["pool"]["capped"] = plan.pool_total > cap
        subsets["kept"]["total"] = plan.kept_total
        result = {
            "status": "succeeded",
            "updated_at": timezone.now().isoformat(),
            "seeds": seeds,
            "encoder": run.encoder,
            "model": "LiT-style: frozen cached features -> two projections, CLIP loss, learnable temperature",
            "config": {k: v for k, v in config_dict(base).items() if k != "device"},
            "budget": (
                f"{base.steps} steps of {base.batch_size} pairs for every set: the same samples seen "
                "(DataComp's fixed compute), so a larger set gets no extra updates."
            ),
            "held_out": {
                "pairs": n_test,
                "judged": plan.held_out.judged,
                "proxy": plan.held_out.proxy,
                "source": plan.held_out.source,
                "images_excluded_from_training": int(len(plan.held_out.image_ids)),
                "same_text_pairs_excluded_from_training": plan.same_text,
            },
            "chance": {"r1": 1 / n_test, "r5": min(1.0, 5 / n_test)},
            "subsets": subsets,
            "kept_minus_random": {
                k: subsets["kept"]["mean"][k] - subsets["random"]["mean"][k] for k in METRICS
            },
            "notes": notes,
            "seconds": round(time.perf_counter() - started, 1),
        }
    except Exception as exc:
        logger.exception("downstream evaluation of filter run %s failed", run.pk)
        _store(
            run.pk,
            {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "updated_at": timezone.now().isoformat(),
            },
        )
        raise
    _store(run.pk, result)
    run.refresh_from_db(fields=["summary"])
    return result
