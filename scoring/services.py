"""Writes of the scoring app: embeddings through the cache, scoring runs and their chunks.

A run is planned into chunks of caption-id ranges (``ScoringChunk`` rows); each chunk embeds its pairs
(cached), computes cosine, CLIPScore and, with a reward model, reward / criteria / uncertainty, then in
ONE transaction upserts its ``Score`` rows, marks itself done and bumps the run's counters. A chunk run
twice therefore changes nothing, a killed worker loses at most its chunk, and the chunk that brings
``chunks_done`` to ``chunks_total`` marks the run succeeded (no result backend, no chord).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from pool.models import Caption, CaptionStatus, ImageStatus, RunStatus
from scoring.active_model import active_model_get
from scoring.cache import EmbeddingCache
from scoring.encoders import Encoder, EncoderError, encoder_load, encoder_name_check
from scoring.models import Score, ScoringChunk, ScoringRun
from scoring.pipeline import images_embed, texts_embed

logger = logging.getLogger(__name__)

FINISHED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
SCORE_UPDATE_FIELDS = [
    "cosine",
    "clipscore",
    "reward",
    "criteria",
    "uncertainty",
    "truncated",
    "error",
    "updated_at",
]


def clipscore(cosine: np.ndarray) -> np.ndarray:
    """CLIPScore (Hessel et al. 2021): 2.5 * max(cos, 0)."""
    return 2.5 * np.maximum(np.asarray(cosine, dtype=np.float64), 0.0)


# --- encoders and caches, once per process -------------------------------------------------------

_caches: dict[tuple[str, str, str], EmbeddingCache] = {}
_caches_lock = threading.Lock()


def embedding_cache_for(encoder: Encoder) -> EmbeddingCache:
    root = str(settings.EMBEDDING_CACHE_DIR)
    key = (encoder.name, encoder.fingerprint, root)
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = EmbeddingCache(encoder.name, fingerprint=encoder.fingerprint, root=root)
        return cache


@dataclass(frozen=True)
class PairRow:
    caption_id: int
    text: str
    text_sha256: str
    image_sha256: str
    image_path: str


@dataclass
class PairFeatures:
    """Features of the readable pairs, aligned with ``caption_ids``; unreadable ones are in ``errors``."""

    caption_ids: list[int]
    image: np.ndarray
    text: np.ndarray
    truncated: list[bool]
    errors: dict[int, str] = field(default_factory=dict)


def _pair_rows(caption_ids) -> list[PairRow]:
    rows = Caption.objects.filter(id__in=list(caption_ids)).values_list(
        "id", "text", "text_sha256", "image__sha256", "image__file"
    )
    media = Path(settings.MEDIA_ROOT)
    return [PairRow(cid, text, tsha, isha, str(media / path)) for cid, text, tsha, isha, path in rows]


def pair_features(*, encoder: Encoder, rows: list[PairRow], progress=None) -> PairFeatures:
    """Features of ``rows``, each image and each distinct text embedded at most once and only when
    the cache lacks it. Unreadable images are not cached, so a repaired file is read again later."""
    cache = embedding_cache_for(encoder)

    image_shas = list(dict.fromkeys(r.image_sha256 for r in rows))
    cached, found = cache.get_images(image_shas)
    image_feats = np.zeros((len(image_shas), encoder.image_feature_dim), dtype=np.float32)
    if cached is not None:
        image_feats[found] = cached[found].astype(np.float32)
    image_errors: dict[str, str] = {}
    missing = [i for i, ok in enumerate(found) if not ok]
    if missing:
        path_of = {r.image_sha256: r.image_path for r in rows}
        paths = [path_of[image_shas[i]] for i in missing]
        feats, errors = images_embed(encoder, paths, progress=progress)
        good = [j for j in range(len(missing)) if j not in errors]
        if good:
            cache.put_images([image_shas[missing[j]] for j in good], feats[good])
            image_feats[[missing[j] for j in good]] = feats[good].astype(np.float16).astype(np.float32)
        for j, reason in errors.items():
            image_errors[image_shas[missing[j]]] = reason

    text_of = {r.text_sha256: r.text for r in rows}
    text_shas = list(text_of)
    cached, found = cache.get_texts(text_shas)
    text_feats = np.zeros((len(text_shas), encoder.text_feature_dim), dtype=np.float32)
    if cached is not None:
        text_feats[found] = cached[found].astype(np.float32)
    missing = [i for i, ok in enumerate(found) if not ok]
    if missing:
        feats, _ = texts_embed(encoder, [text_of[text_shas[i]] for i in missing])
        cache.put_texts([text_shas[i] for i in missing], feats)
        # Rows read back from the cache are float16: round fresh ones the same way so a rescore of
        # cached pairs gives bit-identical scores.
        text_feats[missing] = feats.astype(np.float16).astype(np.float32)
    truncated_of = dict(zip(text_shas, encoder.text_truncated([text_of[s] for s in text_shas]), strict=True))

    image_row = {sha: i for i, sha in enumerate(image_shas)}
    text_row = {sha: i for i, sha in enumerate(text_shas)}
    kept = [r for r in rows if r.image_sha256 not in image_errors]
    return PairFeatures(
        caption_ids=[r.caption_id for r in kept],
        image=image_feats[[image_row[r.image_sha256] for r in kept]],
        text=text_feats[[text_row[r.text_sha256] for r in kept]],
        truncated=[truncated_of[r.text_sha256] for r in kept],
        errors={r.caption_id: image_errors[r.image_sha256] for r in rows if r.image_sha256 in image_errors},
    )


def caption_features(*, encoder: str, caption_ids: list[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(image features, text features, caption ids of those rows), float32, computing and caching
    what is missing. Captions whose image cannot be read (or that do not exist) are left out: the
    third element is the list of ids the rows belong to, in the order of ``caption_ids``."""
    enc = encoder_load(encoder)
    order = {cid: i for i, cid in enumerate(dict.fromkeys(caption_ids))}
    rows = sorted(_pair_rows(order), key=lambda r: order[r.caption_id])
    feats = pair_features(encoder=enc, rows=rows)
    if feats.errors:
        logger.warning(
            "caption_features(%s): %d captions left out: %s", encoder, len(feats.errors), feats.errors
        )
    return feats.image, feats.text, feats.caption_ids


# --- reward models ------------------------------------------------------------------------------

_reward_models: dict[tuple[str, str], tuple[torch.nn.Module, dict]] = {}


def _reward_checkpoint(version: int, encoder: str) -> tuple[str, str]:
    """(checkpoint path, sha256) of reward model ``version``; the active pointer first, then the
    training registry through the app registry (scoring never imports training's code)."""
    active = active_model_get(encoder=encoder)
    if active is not None and active.version == version:
        return active.checkpoint, active.checkpoint_sha256
    from django.apps import apps

    try:
        model = apps.get_model("training", "RewardModel").objects.get(version=version)
    except LookupError as exc:
        raise ValueError(f"Reward model v{version} is unknown here (no training app).") from exc
    except Exception as exc:  # noqa: BLE001 - DoesNotExist of a model we do not import
        raise ValueError(f"Reward model v{version} does not exist.") from exc
    if model.encoder != encoder:
        raise ValueError(f"Reward model v{version} was trained on {model.encoder!r}, not on {encoder!r}.")
    return model.checkpoint, model.checkpoint_sha256


def reward_model_load(path: str, sha256: str = "") -> tuple[torch.nn.Module, dict]:
    key = (path, sha256)
    if key not in _reward_models:
        from scoring.reward_model import load_checkpoint

        model, meta = load_checkpoint(path, map_location="cpu")
        model.eval()
        _reward_models[key] = (model, meta)
    return _reward_models[key]


@torch.inference_mode()
def reward_predict(model: torch.nn.Module, image: np.ndarray, text: np.ndarray):
    out = model(torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(text)))
    return out.reward.float().numpy(), out.criteria.float().numpy(), out.uncertainty.float().numpy()


# --- runs ---------------------------------------------------------------------------------------


def scoring_queryset(run: ScoringRun):
    """The captions a run scores: usable pairs (or the run's explicit caption list)."""
    qs = Caption.objects.all()
    ids = run.params.get("caption_ids")
    if ids is not None:
        return qs.filter(id__in=ids)
    return qs.filter(status=CaptionStatus.OK, image__status=ImageStatus.OK)


def scoring_run_start(
    *,
    encoder: str | None = None,
    reward_model_version: int | None = None,
    chunk_size: int = 2048,
    user=None,
    caption_ids: list[int] | None = None,
    enqueue: bool = True,
) -> ScoringRun:
    """Create a run and enqueue its planning task (on commit). Checks the encoder name and the reward
    model before anything is queued; a bad one raises ``ValueError`` with the reason."""
    encoder = encoder or settings.LOUPE_DEFAULT_ENCODER
    encoder_name_check(encoder)
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1.")
    params: dict = {}
    if reward_model_version is None:
        active = active_model_get(encoder=encoder)
        reward_model_version = active.version if active else 0
    if reward_model_version:
        path, sha = _reward_checkpoint(reward_model_version, encoder)
        if not Path(path).is_file():
            raise ValueError(f"Checkpoint of reward model v{reward_model_version} is missing: {path}")
        _, meta = reward_model_load(path, sha)  # a corrupt checkpoint fails here, before any work
        if meta.get("encoder") not in (None, encoder):
            raise ValueError(
                f"Reward model v{reward_model_version} was trained on {meta['encoder']!r}, not on {encoder!r}."
            )
        params.update(checkpoint=path, checkpoint_sha256=sha)
    if caption_ids is not None:
        params["caption_ids"] = sorted({int(i) for i in caption_ids})
    run = ScoringRun.objects.create(
        encoder=encoder,
        reward_model_version=reward_model_version,
        chunk_size=chunk_size,
        params=params,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    if enqueue:
        from scoring.tasks import scoring_run_execute

        transaction.on_commit(lambda: scoring_run_execute.delay(run.pk))
    return run


def scoring_run_plan(*, run: ScoringRun) -> list[int]:
    """Split the run into chunks (idempotent) and return the indexes still to do."""
    if run.status in FINISHED:
        return []
    if not run.chunks.exists():
        bounds: list[tuple[int, int]] = []
        first = last = None
        count = total = 0
        ids = scoring_queryset(run).order_by("id").values_list("id", flat=True)
        for cid in ids.iterator(chunk_size=10_000):
            if first is None:
                first = cid
            last, count, total = cid, count + 1, total + 1
            if count == run.chunk_size:
                bounds.append((first, last))
                first, count = None, 0
        if first is not None:
            bounds.append((first, last))
        with transaction.atomic():
            if not ScoringChunk.objects.filter(run=run).exists():
                ScoringChunk.objects.bulk_create(
                    [ScoringChunk(run=run, index=i, first_id=a, last_id=b) for i, (a, b) in enumerate(bounds)]
                )
                ScoringRun.objects.filter(pk=run.pk).update(total=total, chunks_total=len(bounds))
                ScoringRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
                    status=RunStatus.RUNNING, started_at=timezone.now()
                )
        run.refresh_from_db()
        if run.chunks_total == 0:
            _run_finish_if_complete(run.pk)
    return list(run.chunks.filter(done=False).values_list("index", flat=True))


def _run_finish_if_complete(run_id: int) -> None:
    ScoringRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, chunks_done__gte=F("chunks_total")).update(
        status=RunStatus.SUCCEEDED, finished_at=timezone.now()
    )


def scoring_chunk_score(*, run_id: int, chunk_index: int, encoder: Encoder | None = None) -> str:
    """Score one chunk. Returns what happened ("scored", "cancelled", "already done", ...)."""
    run = ScoringRun.objects.get(pk=run_id)
    if run.status in FINISHED:
        return f"run {run.status}"
    chunk = ScoringChunk.objects.get(run=run, index=chunk_index)
    if chunk.done:
        return "already done"
    encoder = encoder or encoder_load(run.encoder)
    caption_ids = (
        scoring_queryset(run)
        .filter(id__gte=chunk.first_id, id__lte=chunk.last_id)
        .values_list("id", flat=True)
    )
    rows = _pair_rows(caption_ids)
    feats = pair_features(encoder=encoder, rows=rows)

    d = encoder.embed_dim
    cosine = (
        np.einsum("nd,nd->n", feats.image[:, :d], feats.text[:, :d]) if feats.caption_ids else np.zeros(0)
    )
    clip = clipscore(cosine)
    reward = criteria = uncertainty = None
    keys: list[str] = []
    if run.reward_model_version and feats.caption_ids:
        model, meta = reward_model_load(run.params["checkpoint"], run.params.get("checkpoint_sha256", ""))
        keys = list(meta.get("criteria", []))
        reward, criteria, uncertainty = reward_predict(model, feats.image, feats.text)

    now = timezone.now()
    common = {"encoder": run.encoder, "reward_model_version": run.reward_model_version, "updated_at": now}
    scores = [
        Score(
            caption_id=cid,
            cosine=float(cosine[i]),
            clipscore=float(clip[i]),
            reward=float(reward[i]) if reward is not None else None,
            criteria=(
                {k: round(float(v), 4) for k, v in zip(keys, criteria[i], strict=False)}
                if criteria is not None
                else None
            ),
            uncertainty=float(uncertainty[i]) if uncertainty is not None else None,
            truncated=feats.truncated[i],
            error="",
            **common,
        )
        for i, cid in enumerate(feats.caption_ids)
    ]
    scores += [Score(caption_id=cid, error=reason[:500], **common) for cid, reason in feats.errors.items()]

    with transaction.atomic():
        # Cancelled while we computed: keep nothing, so a cancelled run's numbers stay as they were.
        if ScoringRun.objects.filter(pk=run.pk, status=RunStatus.CANCELLED).exists():
            return "cancelled"
        Score.objects.bulk_create(
            scores,
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["caption", "encoder", "reward_model_version"],
            update_fields=SCORE_UPDATE_FIELDS,
        )
        marked = ScoringChunk.objects.filter(pk=chunk.pk, done=False).update(
            done=True, pairs=len(scores), failed=len(feats.errors), finished_at=now
        )
        if marked:
            ScoringRun.objects.filter(pk=run.pk).update(
                done=F("done") + len(scores),
                chunks_done=F("chunks_done") + 1,
                failed_pairs=F("failed_pairs") + len(feats.errors),
            )
    if marked:
        _run_finish_if_complete(run.pk)
    return "scored" if marked else "already done"


def scoring_run_fail(*, run_id: int, error: str) -> None:
    ScoringRun.objects.filter(pk=run_id).exclude(status__in=FINISHED).update(
        status=RunStatus.FAILED, error=error[:5000], finished_at=timezone.now()
    )


def scoring_run_cancel(*, run: ScoringRun) -> bool:
    """Stop a run: chunks not yet committed skip their work. False if it had already finished."""
    return bool(
        ScoringRun.objects.filter(pk=run.pk)
        .exclude(status__in=FINISHED)
        .update(status=RunStatus.CANCELLED, finished_at=timezone.now())
    )


def scoring_run_resume(*, run: ScoringRun) -> list[int]:
    """Re-enqueue the chunks with no committed scores (after a killed worker or a failure).

    Safe while the old messages may still arrive: a chunk that is already done does nothing.
    """
    from scoring.tasks import scoring_chunk_execute, scoring_run_execute

    if run.status == RunStatus.CANCELLED or run.status == RunStatus.SUCCEEDED:
        return []
    ScoringRun.objects.filter(pk=run.pk, status=RunStatus.FAILED).update(
        status=RunStatus.RUNNING, error="", finished_at=None
    )
    if not run.chunks.exists():
        transaction.on_commit(lambda: scoring_run_execute.delay(run.pk))
        return []
    pending = list(run.chunks.filter(done=False).values_list("index", flat=True))
    for index in pending:
        transaction.on_commit(lambda i=index: scoring_chunk_execute.delay(run.pk, i))
    if not pending:
        _run_finish_if_complete(run.pk)
    return pending


def scoring_run_sync(*, run: ScoringRun, progress=None) -> ScoringRun:
    """Plan and score every chunk in this process (``score_pool --sync``, benchmarks, tests)."""
    try:
        encoder = encoder_load(run.encoder)
    except EncoderError as exc:
        scoring_run_fail(run_id=run.pk, error=str(exc))
        raise
    for index in scoring_run_plan(run=run):
        scoring_chunk_score(run_id=run.pk, chunk_index=index, encoder=encoder)
        if progress is not None:
            progress(ScoringRun.objects.get(pk=run.pk))
    run.refresh_from_db()
    return run
