"""Active-learning priorities for a campaign's open tasks, from the active model and the campaign's mix.

The loop's ``priorities`` step calls it; the strategies themselves are ``training.active_learning``.
"""

from __future__ import annotations

import numpy as np

from annotate.models import Campaign, Task, TaskStatus
from training.active_learning import DEFAULT_MIX, mix_normalise, priorities_mix, strategy_scores

# How many tasks head the queue after a refresh (the active-learning batch); the rest is ordered by
# the blended scores. Overridden by ``selection_mix["batch_size"]``.
DEFAULT_BATCH_SIZE = 100
# Labelled tasks used as k-center's initial centres (most recent first): bounds the cost on big campaigns.
MAX_LABELLED_CENTRES = 5000


def _task_captions(task_ids: list[int]) -> dict[int, list[int]]:
    from annotate.models import TaskCaption

    out: dict[int, list[int]] = {tid: [] for tid in task_ids}
    rows = TaskCaption.objects.filter(task_id__in=task_ids).order_by("task_id", "position", "id")
    for task_id, caption_id in rows.values_list("task_id", "caption_id"):
        out[task_id].append(caption_id)
    return out


def _features(encoder: str, caption_ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Features from the shard pass's by-shard files where they exist (memory-mapped, nothing decoded),
    then from the embedding cache (computed and cached where missing)."""
    from scoring.features import caption_features, caption_features_by_shard

    if not caption_ids:
        return {}
    out = caption_features_by_shard(encoder=encoder, caption_ids=caption_ids)
    rest = [c for c in caption_ids if c not in out]
    if rest:
        img, txt, ids = caption_features(encoder=encoder, caption_ids=rest)
        img, txt = np.asarray(img, dtype=np.float32), np.asarray(txt, dtype=np.float32)
        out.update({int(cid): (img[i], txt[i]) for i, cid in enumerate(ids)})
    return out


def _held_out_accuracy(pointer) -> float | None:
    """The active model's accuracy on its held-out judgments (the batch strategy's warm share)."""
    if pointer is None:
        return None
    from training.models import RewardModel

    metrics = RewardModel.objects.filter(version=pointer.version).values_list("metrics", flat=True).first()
    value = (metrics or {}).get("accuracy")
    return float(value) if isinstance(value, int | float) else None


def task_priorities_refresh(
    *, campaign: Campaign, encoder: str | None = None, seed: int = 0, chunk: int = 2000
) -> dict:
    """Recompute every open task's priority from the active model (if any) and the campaign's mix.

    Model-based strategies need an active reward model for the encoder; without one (cold start)
    the mix falls back to diversity and random. Labelled tasks are k-center's starting centres, so
    the diversity share goes to regions of the pool nobody has judged yet.
    """
    import torch

    from annotate.services import task_priorities_set
    from scoring.active_model import active_model_get, loop_encoder_get
    from scoring.encoders import encoder_load
    from scoring.reward_model import load_checkpoint

    encoder_name = encoder or loop_encoder_get()
    tasks = list(
        Task.objects.filter(campaign=campaign, status=TaskStatus.OPEN)
        .order_by("id")
        .values_list("id", "priority")
    )
    if not tasks:
        return {"tasks": 0, "changed": 0, "strategies": [], "mix": {}, "model_version": None}
    old = dict(tasks)
    task_ids = [tid for tid, _ in tasks]
    labelled_ids = list(
        Task.objects.filter(campaign=campaign, judgment_count__gt=0)
        .exclude(id__in=task_ids)
        .order_by("-id")
        .values_list("id", flat=True)[:MAX_LABELLED_CENTRES]
    )

    pointer = active_model_get(encoder=encoder_name)
    model = None
    if pointer is not None:
        model, _ = load_checkpoint(pointer.checkpoint)
    embed_dim = model.config.embed_dim if model is not None else encoder_load(encoder_name).embed_dim
    image_rows: dict[int, np.ndarray] = {}
    member_rows: dict[int, np.ndarray] = {}
    clip_rows: dict[int, np.ndarray] = {}
    all_ids = task_ids + labelled_ids
    for start in range(0, len(all_ids), chunk):
        ids = all_ids[start : start + chunk]
        captions = _task_captions(ids)
        feats = _features(encoder_name, [c for cs in captions.values() for c in cs])
        # One forward of the reward model per chunk of tasks (not per task), split back by task.
        spans: list[tuple[int, int, int]] = []
        imgs: list[np.ndarray] = []
        txts: list[np.ndarray] = []
        k = embed_dim
        for tid in ids:
            present = [c for c in captions[tid] if c in feats]
            if not present:
                continue
            # A copy: the features are row views of the whole chunk's arrays, and a kept view would keep
            # every chunk's arrays alive (memory growing ~8 KB per open task instead of 2 KB).
            image_rows[tid] = np.array(feats[present[0]][0][:k], dtype=np.float32)
            if model is not None and tid in old:
                spans.append((tid, len(imgs), len(imgs) + len(present)))
                imgs += [feats[c][0] for c in present]
                txts += [feats[c][1] for c in present]
        if spans:
            img, txt = np.stack(imgs), np.stack(txts)
            with torch.no_grad():
                rewards = model(torch.from_numpy(img), torch.from_numpy(txt)).rewards.numpy()
            ie, te = img[:, :k], txt[:, :k]
            cos = (ie * te).sum(1) / np.maximum(np.linalg.norm(ie, axis=1) * np.linalg.norm(te, axis=1), 1e-8)
            clip = 2.5 * np.maximum(cos, 0.0)
            for tid, a, b in spans:
                member_rows[tid] = rewards[:, a:b].copy()
                clip_rows[tid] = clip[a:b].copy()

    scored = [tid for tid in task_ids if tid in image_rows]
    if not scored:
        return {
            "tasks": 0,
            "changed": 0,
            "strategies": [],
            "mix": {},
            "model_version": None,
            "missing_features": len(task_ids),
        }
    index = {tid: i for i, tid in enumerate(scored)}
    embeddings = np.stack(
        [image_rows[t] for t in scored] + [image_rows[t] for t in labelled_ids if t in image_rows]
    )
    labelled_idx = list(range(len(scored), len(embeddings)))
    member = clip = None
    if model is not None and scored:
        from training.active_learning import pad_ragged

        member = pad_ragged([member_rows[t] for t in scored])
        clip = pad_ragged([clip_rows[t] for t in scored])
    mix = campaign.selection_mix or DEFAULT_MIX
    batch = int((campaign.selection_mix or {}).get("batch_size", DEFAULT_BATCH_SIZE))
    # One call: the model's outputs cover the open tasks, the embeddings the open tasks and then the
    # labelled ones (k-center's and the batch strategy's starting centres); scores cover the open tasks.
    scores = strategy_scores(
        member_rewards=member,
        clipscores=clip,
        embeddings=embeddings,
        batch_size=batch,
        seed=seed,
        labelled=labelled_idx,
        skill=_held_out_accuracy(pointer),
        strategies={*mix, *DEFAULT_MIX, "random"},  # what the mix (or its fallback) can use
    )
    scores = {k: v[: len(scored)] for k, v in scores.items()}
    priorities = priorities_mix(scores, mix, batch, seed=seed)
    new = {tid: round(float(priorities[index[tid]]), 6) for tid in scored}
    task_priorities_set(priorities=new)
    changed = sum(1 for tid, p in new.items() if abs(old[tid] - p) > 1e-9)
    return {
        "tasks": len(scored),
        "changed": changed,
        "strategies": sorted(mix_normalise(mix, available=list(scores))),
        "mix": mix_normalise(mix, available=list(scores)),
        "model_version": pointer.version if pointer is not None else None,
        "batch_size": min(batch, len(scored)),
        "missing_features": len(task_ids) - len(scored),
    }
