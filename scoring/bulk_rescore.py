"""Bulk rescore: the reward heads over the cached by-shard features, scores written in bulk.

A new reward model (new heads, same encoder) needs no image decoded and no text encoded: the shard pass
left every pair's features in ``scoring.shard_features``'s by-shard layout. A bulk rescore is a
``ScoringRun`` with ``params["bulk"] = True`` whose chunks are pool shards:

- chunk ``index`` = the shard's pk, ``first_id``/``last_id`` = the range of caption ids in its features;
- chunk ``0`` = every usable caption outside the shards with features (images imported as files,
  shards the pass has not reached), scored by today's per-chunk path (``scoring.features``).

A shard chunk memory-maps the shard's arrays, runs the heads in batches (``torch.inference_mode``,
float32; the image half of the first layer once per distinct image), and writes its scores and flips
``done`` in ONE transaction, like ``scoring.inference.scoring_chunk_score``: a chunk delivered twice
changes nothing, a killed worker loses at most its chunk, a rerun chunk replaces its rows (the
``(caption, encoder, fingerprint, version)`` key), never doubles them. Captions of the shard that the
features lack (a rewrite added after the pass) fall back to today's path inside the same chunk.

Writes (measured in docs/scoring.md, "Bulk rescore"): on PostgreSQL ``COPY`` into a temporary staging
table, then one ``INSERT ... SELECT``: into the run's own load table when the version is new
(``scoring.score_partitions``: indexed and attached as the version's partition when the last chunk is
done, so its scores appear at once), else into ``scoring_score`` with ``ON CONFLICT DO UPDATE``;
elsewhere (SQLite, the demo) Django's ``bulk_create(update_conflicts=True)``.

``truncated`` (the caption was longer than the text tower's context) is a property of the text and the
encoder, not of the heads; the features do not carry it, so a bulk row takes it from the same
encoder identity's version-0 row (written by the pass / a CLIPScore run) when there is one.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from pool.models import Caption, CaptionStatus, ImageStatus, RunStatus
from pool.run_health import Heartbeat
from scoring import score_partitions
from scoring.encoder_names import is_vlm
from scoring.models import Score, ScoringChunk, ScoringRun
from scoring.services import (
    FINISHED,
    SCORE_UPDATE_FIELDS,
    chunk_mark_done,
    clipscore,
    pool_rescore_start,
    run_finish_if_complete,
)
from scoring.shard_features import shard_features_ids, shard_features_read, shard_features_root

logger = logging.getLogger(__name__)

# Chunk index of the captions outside shards with features (shard pks start at 1).
REST_CHUNK = 0
# Pairs per forward pass: large enough that the matmuls dominate, small enough that the hidden
# activations ([heads, batch, hidden] float32, 40 MB at 16k) stay in cache-friendly sizes.
BATCH = 16_384
# Captions per today's-path batch in chunk 0 (they may need encoding).
REST_BATCH = 2_048
# copy_upsert: the default on PostgreSQL (see docs/scoring.md, "Bulk rescore", for the measurements);
# copy_replace and copy_text_upsert are kept for the benchmark's comparison; orm: every database.
WRITE_METHODS = ("copy_upsert", "copy_replace", "copy_text_upsert", "orm")


def heads_dtype() -> torch.dtype:
    """float32 (default: the same scores as today's path to ~1e-7) or, with LOUPE_BULK_RESCORE_DTYPE=
    bfloat16, the first layer's matmuls in bfloat16 (faster on CPUs with AVX512-BF16 or AMX and on
    GPUs; scores then differ from float32 by about 1e-3 of their scale)."""
    import os

    name = str(getattr(settings, "LOUPE_BULK_RESCORE_DTYPE", os.environ.get("LOUPE_BULK_RESCORE_DTYPE", "")))
    if name in ("", "float32"):
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    raise BulkRescoreError(f"LOUPE_BULK_RESCORE_DTYPE={name!r}: use float32 or bfloat16.")


class BulkRescoreError(ValueError):
    """A bulk rescore that cannot start or continue; the message says why."""


@dataclass
class ChunkScores:
    """One chunk's results, aligned arrays (``truncated`` None: take it from the version-0 rows)."""

    caption_ids: np.ndarray  # int64 [N]
    cosine: np.ndarray  # float64 [N]
    clipscore: np.ndarray  # float64 [N]
    reward: np.ndarray | None  # float64 [N]
    criteria: np.ndarray | None  # float64 [N, C]
    criteria_keys: list[str]
    uncertainty: np.ndarray | None
    truncated: np.ndarray | None = None
    errors: dict[int, str] | None = None

    def __len__(self) -> int:
        return len(self.caption_ids) + len(self.errors or {})


# --- the heads over features (no Django) ------------------------------------------------------------


class FusedHeads:
    """A ``RewardEnsemble``'s first layer rearranged for inference over many pairs (same function).

    The model evaluates its E heads as a batched matmul over a concatenated, standardised pair row
    ``[image | text | image*text | cos]``. For inference the standardisation folds into the weights
    (``W' = W / std``, ``b' = b - (mean / std) @ W``), the E heads become one wide matrix [D, E*H], and
    the concatenation is never built: the four blocks of the row each multiply their slice of ``W'``
    and accumulate, the image block once per distinct image. One [N, K] x [K, E*H] GEMM per block
    instead of E batched ones over an expanded copy.
    """

    def __init__(self, model, dtype=torch.float32):
        c = model.config
        e, d, h = c.n_heads, c.input_dim, c.hidden
        w = model.w1.detach().float().permute(1, 0, 2).reshape(d, e * h)  # [D, E*H]
        std, mean = model.feat_std.float(), model.feat_mean.float()
        w_folded = w / std[:, None]
        self.bias = (model.b1.detach().float().reshape(e * h) - (mean / std) @ w).contiguous()
        fi, ft, k = c.image_dim, c.text_dim, c.embed_dim
        self.w_image = w_folded[:fi].to(dtype).contiguous()
        self.w_text = w_folded[fi : fi + ft].to(dtype).contiguous()
        self.w_product = w_folded[fi + ft : fi + ft + k].to(dtype).contiguous()
        self.w_cos = w_folded[fi + ft + k].contiguous()
        self.w2 = model.w2.detach().float()  # [E, H, O]
        self.b2 = model.b2.detach().float()  # [E, 1, O]
        self.e, self.h, self.k, self.dtype = e, h, k, dtype
        self.criteria_from_logits = model.criteria_from_logits

    def __call__(self, img: torch.Tensor, txt: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """[E, N, 1 + C] like ``RewardEnsemble.raw_outputs(img, txt, index)`` (eval mode)."""
        k, dt = self.k, self.dtype
        img_e = img[index, :k]
        txt_e = txt[:, :k]
        product = img_e * txt_e
        cos = product.sum(dim=1) / (img_e.norm(dim=1) * txt_e.norm(dim=1)).clamp_min(1e-8)
        hidden = torch.matmul(img.to(dt), self.w_image).float()[index]  # image part once per image
        hidden += torch.matmul(txt.to(dt), self.w_text).float()
        hidden += torch.matmul(product.to(dt), self.w_product).float()
        hidden += cos[:, None] * self.w_cos + self.bias
        hidden = torch.nn.functional.gelu(hidden)
        return torch.baddbmm(self.b2, hidden.view(-1, self.e, self.h).transpose(0, 1), self.w2)


@torch.inference_mode()
def heads_predict(
    model,
    images: np.ndarray,
    texts: np.ndarray,
    image_row: np.ndarray,
    *,
    embed_dim: int,
    batch: int = BATCH,
    dtype=torch.float32,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(cosine, reward, criteria, uncertainty) of pairs (``texts[n]``, ``images[image_row[n]]``).

    ``image_row`` is mostly ascending (a shard's captions are grouped by image), so a batch of captions
    uses a short range of images and the image half of the first layer runs once per image of it.
    Inputs are float16 (memory-mapped) or float32; the math is float32 (``dtype=torch.bfloat16``:
    the first layer's matmuls in bfloat16, measured in docs/scoring.md, not the default).
    """
    n = len(texts)
    cosine = np.empty(n, dtype=np.float32)
    reward = criteria = uncertainty = None
    heads = None
    if model is not None:
        heads = FusedHeads(model, dtype=dtype)
        reward = np.empty(n, dtype=np.float32)
        criteria = np.empty((n, model.config.n_outputs - 1), dtype=np.float32)
        uncertainty = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        rows = np.asarray(image_row[start:stop], dtype=np.int64)
        # Usually ascending (a shard's captions grouped by image), but a caption added after the shard
        # pass sorts last while pointing at an early image: take the range the batch really spans.
        lo, hi = int(rows.min()), int(rows.max()) + 1
        img = torch.from_numpy(np.asarray(images[lo:hi], dtype=np.float32))
        txt = torch.from_numpy(np.asarray(texts[start:stop], dtype=np.float32))
        index = torch.from_numpy(rows - lo)
        # The same float32 dot product as today's path (``scoring.inference``: einsum over the shared part).
        cosine[start:stop] = np.einsum("nd,nd->n", img[index, :embed_dim].numpy(), txt[:, :embed_dim].numpy())
        if heads is None:
            continue
        out = heads(img, txt, index)  # [E, b, 1 + C]
        rewards = out[..., 0]
        reward[start:stop] = rewards.mean(dim=0).numpy()
        criteria[start:stop] = heads.criteria_from_logits(out[..., 1:]).mean(dim=0).numpy()
        uncertainty[start:stop] = rewards.std(dim=0, unbiased=False).numpy()
    return cosine, reward, criteria, uncertainty


# --- runs ----------------------------------------------------------------------------------------------


def bulk_rescore_start(
    *, encoder: str | None = None, reward_model_version: int | None = None, user=None, enqueue: bool = True
) -> ScoringRun:
    """A bulk rescore run (checked like ``scoring_run_start``: encoder, checkpoint and its hash) and its
    planning task on commit. Raises ``ValueError`` with the reason when it cannot start."""
    if encoder and is_vlm(encoder):
        raise BulkRescoreError("A multimodal judge has no cached features: use a scoring run for it.")
    return pool_rescore_start(
        encoder=encoder, reward_model_version=reward_model_version, user=user, enqueue=enqueue, bulk=True
    )


def is_bulk(run: ScoringRun) -> bool:
    return bool((run.params or {}).get("bulk"))


def _features_root(run: ScoringRun) -> Path:
    return shard_features_root(settings.EMBEDDING_CACHE_DIR, run.encoder, run.encoder_fingerprint)


def _usable(qs):
    return qs.filter(status=CaptionStatus.OK, image__status=ImageStatus.OK)


def bulk_rescore_plan(*, run: ScoringRun) -> list[int]:
    """One chunk per shard with features plus chunk 0 (idempotent); return the indexes still to do.

    The run's ``total`` is provisional here (the featured captions, usable or not: no query of the
    pool); ``bulk_rescore_total_count`` makes it exact once the chunks are on their way, so workers
    do not wait for a count of every usable pair (12 s at 10M with the pool cached, minutes without).
    """
    if run.status in FINISHED:
        return []
    if not run.chunks.exists():
        root = settings.EMBEDDING_CACHE_DIR
        chunks = [ScoringChunk(run=run, index=REST_CHUNK, first_id=0, last_id=0)]
        total = 0
        for shard_id in shard_features_ids(root, run.encoder, run.encoder_fingerprint):
            ids = shard_features_read(_features_root(run) / str(shard_id)).caption_ids
            if len(ids):
                chunks.append(
                    ScoringChunk(run=run, index=shard_id, first_id=int(ids.min()), last_id=int(ids.max()))
                )
                total += len(ids)
        with transaction.atomic():
            if not ScoringChunk.objects.filter(run=run).exists():
                ScoringChunk.objects.bulk_create(chunks, batch_size=5000)
                params = dict(run.params or {})
                if _load_table_wanted(run):
                    params["load_table"] = score_partitions.load_table_name(run.pk)
                    score_partitions.load_table_create(params["load_table"])
                ScoringRun.objects.filter(pk=run.pk).update(
                    total=total, chunks_total=len(chunks), params=params
                )
                ScoringRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
                    status=RunStatus.RUNNING, started_at=timezone.now()
                )
        run.refresh_from_db()
    return list(run.chunks.filter(done=False).order_by("index").values_list("index", flat=True))


def _key(run: ScoringRun) -> tuple[str, str, int]:
    return (run.encoder, run.encoder_fingerprint, run.reward_model_version)


def _load_table_wanted(run: ScoringRun) -> bool:
    """Load into a table of its own (``scoring.score_partitions``) when the version has no rows yet
    (LOUPE_BULK_RESCORE_LOAD_TABLE=0 turns it off: every chunk upserts into ``scoring_score``)."""
    if not settings.LOUPE_BULK_RESCORE_LOAD_TABLE or not score_partitions.partitioned():
        return False
    name = score_partitions.load_table_name(run.pk)
    return score_partitions.table_state(name) != "attached" and not score_partitions.key_has_rows(_key(run))


def loading_table(run: ScoringRun) -> str | None:
    """The run's load table while it takes rows (None: write into ``scoring_score``)."""
    params = run.params or {}
    return None if params.get("load_finished") else params.get("load_table")


def _params_merge(run_id: int, values: dict) -> None:
    """Merge ``values`` into the run's ``params`` (read under the caller's lock, if any)."""
    params = ScoringRun.objects.filter(pk=run_id).values_list("params", flat=True).first() or {}
    ScoringRun.objects.filter(pk=run_id).update(params={**params, **values})


def bulk_rescore_finish(*, run_id: int) -> ScoringRun:
    """After the last chunk (or a cancel): index and attach the run's load table, and mark the run
    succeeded, in one transaction under the run's row lock (readers never see a succeeded run without
    its scores; two workers finishing at once do it once). A failed run keeps its table until resumed."""
    run = ScoringRun.objects.get(pk=run_id)
    name = loading_table(run)
    complete = run.chunks_done >= run.chunks_total
    if name and ((complete and run.status == RunStatus.RUNNING) or run.status == RunStatus.CANCELLED):
        Heartbeat(model=ScoringRun, run_id=run.pk)()
        # Committed before the build, so the run's page can say what the run is doing meanwhile.
        _params_merge(run_id, {"finishing_since": timezone.now().isoformat()})
        started = time.perf_counter()
        seconds: dict[str, float] = {}
        with transaction.atomic():
            locked = ScoringRun.objects.select_for_update().get(pk=run_id)
            if loading_table(locked):
                outcome = score_partitions.load_table_finish(
                    name, _key(locked), update_fields=SCORE_UPDATE_FIELDS, seconds=seconds
                )
                logger.info("bulk rescore %s: load table %s %s", run_id, name, outcome)
                _params_merge(
                    run_id,
                    {
                        "load_finished": outcome,
                        "finish_seconds": round(time.perf_counter() - started, 1),
                        "finish_steps": seconds,
                    },
                )
            run_finish_if_complete(run_id)
        score_partitions.table_vacuum(name)
    else:
        run_finish_if_complete(run_id)
    # A finished run scored every usable pair once: its total is what it did, whether or not the
    # planner's count (``bulk_rescore_total_count``) ran before it.
    ScoringRun.objects.filter(pk=run_id, status=RunStatus.SUCCEEDED).exclude(total=F("done")).update(
        total=F("done")
    )
    return ScoringRun.objects.get(pk=run_id)


def bulk_rescore_total_count(*, run: ScoringRun) -> int:
    """Set the run's ``total`` to what a scoring run of this identity would score: every usable pair."""
    total = _usable(Caption.objects.all()).count()
    ScoringRun.objects.filter(pk=run.pk).update(total=total)
    return total


def _reward_model(run: ScoringRun):
    if not run.reward_model_version:
        return None, []
    from scoring.inference import reward_model_load

    model, meta = reward_model_load(run.params["checkpoint"], run.params.get("checkpoint_sha256", ""))
    return model, list(meta.get("criteria", []))


def _today_path_scores(run: ScoringRun, caption_ids: list[int], model, keys: list[str]) -> ChunkScores:
    """Captions without shard features: features through the content-keyed cache (encoding what it
    lacks), exactly as ``scoring.inference.scoring_chunk_score`` gets them."""
    from scoring.encoders import encoder_load
    from scoring.features import pair_features, pair_rows

    encoder = encoder_load(run.encoder)
    if encoder.fingerprint != run.encoder_fingerprint:
        raise BulkRescoreError(
            f"The weights of encoder {run.encoder!r} changed after scoring run {run.pk} started: start a "
            "new run for the new weights."
        )
    feats = pair_features(encoder=encoder, rows=pair_rows(caption_ids))
    cosine, reward, criteria, uncertainty = heads_predict(
        model, feats.image, feats.text, np.arange(len(feats.caption_ids)), embed_dim=encoder.embed_dim
    )
    return ChunkScores(
        caption_ids=np.asarray(feats.caption_ids, dtype=np.int64),
        cosine=cosine.astype(np.float64),
        clipscore=clipscore(cosine),
        reward=None if reward is None else reward.astype(np.float64),
        criteria=None if criteria is None else criteria.astype(np.float64),
        criteria_keys=keys,
        uncertainty=None if uncertainty is None else uncertainty.astype(np.float64),
        truncated=np.asarray(feats.truncated, dtype=bool),
        errors=dict(feats.errors),
    )


def _concat(parts: list[ChunkScores], keys: list[str]) -> ChunkScores:
    parts = [p for p in parts if len(p)]
    if not parts:
        empty = np.zeros(0)
        return ChunkScores(np.zeros(0, np.int64), empty, empty, None, None, keys, None, None, {})
    if len(parts) == 1:
        return parts[0]

    def cat(name):
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else np.concatenate(values)

    truncated = [
        p.truncated if p.truncated is not None else np.full(len(p.caption_ids), -1, dtype=np.int8)
        for p in parts
    ]
    errors: dict[int, str] = {}
    for p in parts:
        errors.update(p.errors or {})
    return ChunkScores(
        caption_ids=cat("caption_ids"),
        cosine=cat("cosine"),
        clipscore=cat("clipscore"),
        reward=cat("reward"),
        criteria=cat("criteria"),
        criteria_keys=keys,
        uncertainty=cat("uncertainty"),
        # -1: unknown (take the version-0 row's), else 0/1.
        truncated=np.concatenate([np.asarray(t, dtype=np.int8) for t in truncated]),
        errors=errors,
    )


def shard_scores(run: ScoringRun, shard_id: int, model, keys: list[str], progress=None) -> ChunkScores:
    """The scores of one shard's usable captions: heads over its features, today's path for the rest."""
    # whole=True: the kernel reads the feature files ahead while the database answers the query below.
    feats = shard_features_read(_features_root(run) / str(int(shard_id)), whole=True)
    # One fetch (not a server-side cursor's round trips): a shard's ids are a few hundred kB.
    usable = np.array(
        list(_usable(Caption.objects.filter(image__shard_id=shard_id)).values_list("id", flat=True)),
        dtype=np.int64,
    )
    usable.sort()
    caption_ids = np.asarray(feats.caption_ids)
    keep = np.flatnonzero(np.isin(caption_ids, usable, assume_unique=True))
    parts: list[ChunkScores] = []
    if len(keep):
        image_row = np.asarray(feats.caption_image_row)[keep]
        # Only the kept rows are read from the memory map (a shard's features are contiguous; most
        # rows are kept, so this is close to one sequential read).
        texts = np.asarray(feats.texts[keep] if len(keep) < len(caption_ids) else feats.texts)
        embed_dim = model.config.embed_dim if model is not None else feats.texts.shape[1]
        cosine, reward, criteria, uncertainty = heads_predict(
            model, feats.images, texts, image_row, embed_dim=embed_dim, dtype=heads_dtype()
        )
        parts.append(
            ChunkScores(
                caption_ids=caption_ids[keep].astype(np.int64),
                cosine=cosine.astype(np.float64),
                clipscore=clipscore(cosine),
                reward=None if reward is None else reward.astype(np.float64),
                criteria=None if criteria is None else criteria.astype(np.float64),
                criteria_keys=keys,
                uncertainty=None if uncertainty is None else uncertainty.astype(np.float64),
            )
        )
    if progress is not None:
        progress()
    missing = np.setdiff1d(usable, caption_ids, assume_unique=True)
    if len(missing):
        # Added after the shard pass (rewrites, late captions): today's path, same chunk.
        parts.append(_today_path_scores(run, missing.tolist(), model, keys))
    return _concat(parts, keys)


def rest_caption_ids(run: ScoringRun):
    """Usable captions outside the shards that have features, ascending (streamed)."""
    featured = list(run.chunks.exclude(index=REST_CHUNK).values_list("index", flat=True))
    qs = (
        _usable(Caption.objects.all()).exclude(image__shard_id__in=featured)
        if featured
        else _usable(Caption.objects.all())
    )
    return qs.order_by("id").values_list("id", flat=True).iterator(chunk_size=10_000)


# --- writes ----------------------------------------------------------------------------------------------


def _truncated_from_version0(run: ScoringRun, scores: ChunkScores) -> np.ndarray:
    """0/1 per row: the row's own flag when known, else the version-0 row's of the same weights."""
    known = (
        np.asarray(scores.truncated, dtype=np.int8)
        if scores.truncated is not None
        else np.full(len(scores.caption_ids), -1, dtype=np.int8)
    )
    unknown = known < 0
    if unknown.any():
        ids = scores.caption_ids[unknown]
        flagged = np.fromiter(
            Score.objects.filter(
                caption_id__gte=int(ids.min()),
                caption_id__lte=int(ids.max()),
                encoder=run.encoder,
                encoder_fingerprint=run.encoder_fingerprint,
                reward_model_version=0,
                truncated=True,
            ).values_list("caption_id", flat=True),
            dtype=np.int64,
        )
        known = known.copy()
        known[unknown] = np.isin(ids, flagged).astype(np.int8)
    return known.astype(bool)


def _criteria_json(scores: ChunkScores) -> list[str] | None:
    if scores.criteria is None:
        return None
    # Rounded like today's path (4 decimals); the JSON text is built once per row with one template.
    keys = (json.dumps(k).replace("{", "{{").replace("}", "}}") for k in scores.criteria_keys)
    template = "{{" + ", ".join(f"{k}: {{:.4f}}" for k in keys) + "}}"
    return [template.format(*row) for row in scores.criteria.tolist()]


def _write_orm(run: ScoringRun, scores: ChunkScores, truncated: np.ndarray, now) -> None:
    common = {
        "encoder": run.encoder,
        "encoder_fingerprint": run.encoder_fingerprint,
        "reward_model_version": run.reward_model_version,
        "updated_at": now,
    }
    keys = scores.criteria_keys
    rows = [
        Score(
            caption_id=int(cid),
            cosine=float(scores.cosine[i]),
            clipscore=float(scores.clipscore[i]),
            reward=float(scores.reward[i]) if scores.reward is not None else None,
            criteria=(
                {k: round(float(v), 4) for k, v in zip(keys, scores.criteria[i], strict=False)}
                if scores.criteria is not None
                else None
            ),
            uncertainty=float(scores.uncertainty[i]) if scores.uncertainty is not None else None,
            truncated=bool(truncated[i]),
            error="",
            **common,
        )
        for i, cid in enumerate(scores.caption_ids.tolist())
    ]
    rows += [
        Score(caption_id=cid, error=reason[:500], **common) for cid, reason in (scores.errors or {}).items()
    ]
    Score.objects.bulk_create(
        rows,
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["caption", "encoder", "encoder_fingerprint", "reward_model_version"],
        update_fields=SCORE_UPDATE_FIELDS,
    )


STAGE = "loupe_bulk_score_stage"


def _copy_text(scores: ChunkScores, truncated: np.ndarray) -> bytes:
    """Rows of the staging table in COPY's text format (no value holds a tab, newline or backslash:
    numbers, the criteria JSON, and error texts cleaned below)."""
    null = "\\N"
    n = len(scores.caption_ids)
    cols = [
        map(str, scores.caption_ids.tolist()),
        map(repr, scores.cosine.tolist()),
        map(repr, scores.clipscore.tolist()),
        map(repr, scores.reward.tolist()) if scores.reward is not None else [null] * n,
        _criteria_json(scores) or [null] * n,
        map(repr, scores.uncertainty.tolist()) if scores.uncertainty is not None else [null] * n,
        ("t" if t else "f" for t in truncated.tolist()),
    ]
    buffer = io.StringIO()
    buffer.writelines(
        f"{a}\t{b}\t{c}\t{d}\t{e}\t{f}\t{g}\t\n" for a, b, c, d, e, f, g in zip(*cols, strict=True)
    )
    for cid, reason in (scores.errors or {}).items():
        clean = " ".join(reason[:500].replace("\\", "/").split())
        buffer.write(f"{cid}\t{null}\t{null}\t{null}\t{null}\t{null}\tf\t{clean}\n")
    return buffer.getvalue().encode()


_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_PGCOPY_TRAILER = b"\xff\xff"


def _copy_binary(columns: list[tuple[np.ndarray, str]]) -> bytes:
    """Rows in COPY's binary format, built by numpy with no Python loop per row: every field here is
    fixed-width (int8, float8, bool), so a tuple is a packed record [field count, (length, value)...]
    in network byte order."""
    n = len(columns[0][0])
    fields = [("count", ">i2")]
    for i, (_, dtype) in enumerate(columns):
        fields += [(f"len{i}", ">i4"), (f"val{i}", dtype)]
    records = np.empty(n, dtype=np.dtype(fields))
    records["count"] = len(columns)
    for i, (values, dtype) in enumerate(columns):
        records[f"len{i}"] = np.dtype(dtype).itemsize
        records[f"val{i}"] = values
    return _PGCOPY_HEADER + records.tobytes() + _PGCOPY_TRAILER


def _stage(cursor, scores: ChunkScores, truncated: np.ndarray, *, text: bool = False) -> tuple[str, list]:
    """Load the scores into a temporary staging table; return the SELECT list that turns its rows into
    ``scoring_score`` values (the criteria JSON is built by the server from float columns)."""
    keys = scores.criteria_keys if scores.criteria is not None else []
    crit_cols = [f"c{i}" for i in range(len(keys))]
    has_reward = scores.reward is not None
    cursor.execute(f"DROP TABLE IF EXISTS {STAGE}")
    cursor.execute(
        f"CREATE TEMPORARY TABLE {STAGE} (caption_id bigint, cosine double precision, clipscore double "
        "precision, truncated boolean, reward double precision, uncertainty double precision, criteria jsonb, "
        "error varchar(500)" + "".join(f", {c} double precision" for c in crit_cols) + ") ON COMMIT DROP"
    )
    if text:
        with cursor.cursor.copy(
            f"COPY {STAGE} (caption_id, cosine, clipscore, reward, criteria, uncertainty, truncated, error) "
            "FROM STDIN"
        ) as copy:
            copy.write(_copy_text(scores, truncated))
        return (
            "caption_id, cosine, clipscore, reward, criteria, uncertainty, truncated, COALESCE(error, '')",
            [],
        )
    cols = ["caption_id", "cosine", "clipscore", "truncated"]
    data = [
        (scores.caption_ids, ">i8"),
        (scores.cosine, ">f8"),
        (scores.clipscore, ">f8"),
        (truncated.astype(np.uint8), "u1"),
    ]
    if has_reward:
        cols += ["reward", "uncertainty", *crit_cols]
        data += [(scores.reward, ">f8"), (scores.uncertainty, ">f8")]
        data += [(scores.criteria[:, i], ">f8") for i in range(len(keys))]
    if len(scores.caption_ids):
        with cursor.cursor.copy(f"COPY {STAGE} ({', '.join(cols)}) FROM STDIN (FORMAT binary)") as copy:
            copy.write(_copy_binary(data))
    if scores.errors:
        cursor.executemany(
            f"INSERT INTO {STAGE} (caption_id, truncated, error) VALUES (%s, false, %s)",
            [(cid, reason[:500]) for cid, reason in scores.errors.items()],
        )
    criteria = (
        "CASE WHEN error IS NULL THEN jsonb_build_object("
        + ", ".join(f"%s::text, round({c}::numeric, 4)" for c in crit_cols)
        + ") END"
        if crit_cols
        else "NULL::jsonb"
    )
    return (
        f"caption_id, cosine, clipscore, reward, {criteria}, uncertainty, truncated, COALESCE(error, '')",
        list(keys),
    )


def _write_copy(
    run: ScoringRun, scores: ChunkScores, truncated: np.ndarray, now, *, mode: str, table: str | None = None
) -> None:
    """COPY into a temporary staging table, then into ``table`` (default ``scoring_score``) in one
    statement: ``upsert`` INSERT ... ON CONFLICT DO UPDATE; ``replace`` DELETE the rows of these
    captions, then a plain INSERT; ``text_upsert`` like ``upsert`` with COPY's text format (rows
    formatted in Python); ``load`` a plain INSERT into the run's load table (no index to conflict on:
    the chunk's done flag, in the same transaction, is what keeps a chunk from writing twice)."""
    table = connection.ops.quote_name(table or Score._meta.db_table)
    with connection.cursor() as cursor:
        select, key_params = _stage(cursor, scores, truncated, text=mode == "text_upsert")
        identity = [run.encoder, run.encoder_fingerprint, run.reward_model_version]
        if mode == "replace":
            cursor.execute(
                f"DELETE FROM {table} s USING {STAGE} st WHERE s.caption_id = st.caption_id AND "
                "s.encoder = %s AND s.encoder_fingerprint = %s AND s.reward_model_version = %s",
                identity,
            )
        conflict = ""
        if mode not in ("replace", "load"):
            updates = ", ".join(f"{f} = EXCLUDED.{f}" for f in SCORE_UPDATE_FIELDS)
            conflict = (
                " ON CONFLICT (caption_id, encoder, encoder_fingerprint, reward_model_version) "
                f"DO UPDATE SET {updates}"
            )
        cursor.execute(
            f"INSERT INTO {table} (caption_id, cosine, clipscore, reward, criteria, uncertainty, truncated, "
            f"error, encoder, encoder_fingerprint, reward_model_version, updated_at) SELECT {select}, %s, %s, "
            f"%s, %s FROM {STAGE}{conflict}",
            [*key_params, *identity, now],
        )


def write_method_default() -> str:
    return "copy_upsert" if connection.vendor == "postgresql" else "orm"


def scores_write(*, run: ScoringRun, scores: ChunkScores, method: str | None = None, now=None) -> None:
    """Upsert ``scores`` under the run's identity (inside the caller's transaction)."""
    method = method or write_method_default()
    if method not in WRITE_METHODS:
        raise BulkRescoreError(f"Unknown write method {method!r}: use one of {', '.join(WRITE_METHODS)}.")
    if method.startswith("copy") and connection.vendor != "postgresql":
        raise BulkRescoreError("The COPY write needs PostgreSQL; use method 'orm' on other databases.")
    if not len(scores):
        return
    now = now or timezone.now()
    truncated = _truncated_from_version0(run, scores)
    if method == "orm":
        _write_orm(run, scores, truncated, now)
    elif (load := loading_table(run)) is not None:
        _write_copy(run, scores, truncated, now, mode="load", table=load)
    else:
        _write_copy(run, scores, truncated, now, mode=method.removeprefix("copy_"))


# --- a chunk ----------------------------------------------------------------------------------------------


def bulk_rescore_chunk(*, run_id: int, chunk_index: int, write_method: str | None = None) -> str:
    """Score one chunk of a bulk run (a shard, or chunk 0). Returns what happened."""
    run = ScoringRun.objects.get(pk=run_id)
    if run.status in FINISHED:
        return f"run {run.status}"
    chunk = ScoringChunk.objects.get(run=run, index=chunk_index)
    if chunk.done:
        return "already done"
    beat = Heartbeat(model=ScoringRun, run_id=run.pk)
    beat()
    model, keys = _reward_model(run)
    if chunk_index == REST_CHUNK:
        parts = []
        batch: list[int] = []
        for cid in rest_caption_ids(run):
            batch.append(cid)
            if len(batch) == REST_BATCH:
                parts.append(_today_path_scores(run, batch, model, keys))
                batch = []
                beat()
        if batch:
            parts.append(_today_path_scores(run, batch, model, keys))
        scores = _concat(parts, keys)
    else:
        scores = shard_scores(run, chunk_index, model, keys, progress=beat)
    failed = len(scores.errors or {})
    with transaction.atomic():
        # Cancelled while we computed: keep nothing, so a cancelled run's numbers stay as they were.
        if ScoringRun.objects.filter(pk=run.pk, status=RunStatus.CANCELLED).exists():
            return "cancelled"
        # Lock the chunk: two deliveries of it cannot both write (the second finds it done).
        if ScoringChunk.objects.select_for_update().filter(pk=chunk.pk, done=False).first() is None:
            return "already done"
        scores_write(run=run, scores=scores, method=write_method)
        marked = chunk_mark_done(run=run, chunk=chunk, pairs=len(scores), failed=failed)
        ScoringRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
    if marked:
        bulk_rescore_finish(run_id=run.pk)
    return "scored" if marked else "already done"


def bulk_rescore_sync(*, run: ScoringRun, write_method: str | None = None, progress=None) -> ScoringRun:
    """Plan and score every chunk in this process (benchmarks, tests, a command's ``--sync``)."""
    pending = bulk_rescore_plan(run=run)
    bulk_rescore_total_count(run=run)
    for index in pending:
        bulk_rescore_chunk(run_id=run.pk, chunk_index=index, write_method=write_method)
        if progress is not None:
            progress(ScoringRun.objects.get(pk=run.pk))
    run.refresh_from_db()
    return run
