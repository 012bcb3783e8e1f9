"""Scoring runs: start, plan, cancel, resume, fail. No ML here (the web tier imports this module);
the work a chunk does is ``scoring.inference``, the features it reads are ``scoring.features``.

A run is planned into chunks of caption-id ranges (``ScoringChunk`` rows); each chunk embeds its pairs
(cached), computes cosine, CLIPScore and, with a reward model, reward / criteria / uncertainty, then in
ONE transaction upserts its ``Score`` rows, marks itself done and bumps the run's counters. A chunk run
twice therefore changes nothing, a killed worker loses at most its chunk, and the chunk that brings
``chunks_done`` to ``chunks_total`` marks the run succeeded (no result backend, no chord).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from pool.models import Caption, CaptionStatus, ImageStatus, RunStatus
from scoring.active_model import active_model_get, loop_encoder_get
from scoring.checkpoint_meta import checkpoint_meta_read
from scoring.encoder_names import encoder_fingerprint, encoder_name_check
from scoring.models import Score, ScoringChunk, ScoringRun

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


def reward_checkpoint(version: int, encoder: str) -> tuple[str, str]:
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


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- runs ---------------------------------------------------------------------------------------


def scoring_queryset(run: ScoringRun):
    """The captions a run scores: usable pairs, the run's explicit caption list, or a score band
    (a judge run over the pairs whose reward or CLIPScore lies between two recorded values)."""
    qs = Caption.objects.all()
    ids = run.params.get("caption_ids")
    if ids is not None:
        return qs.filter(id__in=ids)
    usable = qs.filter(status=CaptionStatus.OK, image__status=ImageStatus.OK)
    band = run.params.get("band")
    if band:
        in_band = Score.objects.filter(
            caption=OuterRef("pk"),
            encoder=band["encoder"],
            encoder_fingerprint=band.get("encoder_fingerprint", ""),
            reward_model_version=band["reward_model_version"],
            **{f"{band['field']}__gte": band["low"], f"{band['field']}__lte": band["high"]},
        )
        usable = usable.filter(Exists(in_band))
    return usable


def judge_identity_record(*, run: ScoringRun, fingerprint: str) -> None:
    """A judge's identity (weights, tokenizer, template, prompts) is known only once it is loaded: the
    first planning of a judge run records it, and every chunk must then be judged by that identity."""
    if not run.encoder_fingerprint:
        ScoringRun.objects.filter(pk=run.pk, encoder_fingerprint="").update(encoder_fingerprint=fingerprint)
        run.refresh_from_db(fields=["encoder_fingerprint"])


def chunk_mark_done(*, run: ScoringRun, chunk: ScoringChunk, pairs: int, failed: int) -> bool:
    """Inside the chunk's write transaction: flip ``done`` once and bump the run's counters. False when
    the chunk was already done (a redelivered message), so its pairs are never counted twice."""
    marked = ScoringChunk.objects.filter(pk=chunk.pk, done=False).update(
        done=True, pairs=pairs, failed=failed, finished_at=timezone.now()
    )
    if marked:
        ScoringRun.objects.filter(pk=run.pk).update(
            done=F("done") + pairs, chunks_done=F("chunks_done") + 1, failed_pairs=F("failed_pairs") + failed
        )
    return bool(marked)


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
    encoder = encoder or loop_encoder_get()
    encoder_name_check(encoder)
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1.")
    # Hashes the weights file (no torch): the run's scores are keyed by it, and a worker that finds
    # other weights behind the name refuses to mix them into this run.
    fingerprint = encoder_fingerprint(encoder)
    params: dict = {}
    sha = ""
    if reward_model_version is None:
        active = active_model_get(encoder=encoder)
        reward_model_version = active.version if active else 0
    if reward_model_version:
        path, sha = reward_checkpoint(reward_model_version, encoder)
        if not Path(path).is_file():
            raise ValueError(f"Checkpoint of reward model v{reward_model_version} is missing: {path}")
        # A damaged or replaced checkpoint fails here, before any work (and without loading torch in
        # the web process): the registry recorded its hash when it was trained.
        if sha and _file_sha256(path) != sha:
            raise ValueError(
                f"Checkpoint of reward model v{reward_model_version} at {path} does not match the hash "
                "recorded when it was trained: it was changed or damaged. Retrain or restore it."
            )
        meta = checkpoint_meta_read(path) or {}
        if meta.get("encoder") not in (None, encoder):
            raise ValueError(
                f"Reward model v{reward_model_version} was trained on {meta['encoder']!r}, not on {encoder!r}."
            )
        trained_on = meta.get("encoder_fingerprint")
        if trained_on is not None and trained_on != fingerprint:
            raise ValueError(
                f"Reward model v{reward_model_version} was trained on features of {encoder!r} with weights "
                f"{trained_on}, but the weights there now are {fingerprint or 'a pretrained tag'}: its "
                "scores would be noise. Restore those weights, or retrain on the new ones."
            )
        # Recorded on the run even when the registry had no hash: exports name the exact checkpoint.
        sha = sha or _file_sha256(path)
        params.update(checkpoint=path, checkpoint_sha256=sha)
    if caption_ids is not None:
        params["caption_ids"] = sorted({int(i) for i in caption_ids})
    run = ScoringRun.objects.create(
        encoder=encoder,
        encoder_fingerprint=fingerprint,
        reward_model_version=reward_model_version,
        reward_checkpoint_sha256=sha,
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
            run_finish_if_complete(run.pk)
    return list(run.chunks.filter(done=False).values_list("index", flat=True))


def run_finish_if_complete(run_id: int) -> None:
    ScoringRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, chunks_done__gte=F("chunks_total")).update(
        status=RunStatus.SUCCEEDED, finished_at=timezone.now()
    )


def scoring_run_fail(*, run_id: int, error: str) -> None:
    ScoringRun.objects.filter(pk=run_id).exclude(status__in=FINISHED).update(
        status=RunStatus.FAILED, error=error[:5000], finished_at=timezone.now()
    )


def scoring_run_cancel(*, run: ScoringRun) -> bool:
    """Stop a run: chunks not yet committed skip their work. False if it had already finished.

    A bulk rescore's committed chunks sit in its load table: a task attaches them (as a finished run's).
    """
    cancelled = bool(
        ScoringRun.objects.filter(pk=run.pk)
        .exclude(status__in=FINISHED)
        .update(status=RunStatus.CANCELLED, finished_at=timezone.now())
    )
    if cancelled and (run.params or {}).get("load_table"):
        from scoring.tasks import bulk_rescore_finish_task

        transaction.on_commit(lambda: bulk_rescore_finish_task.delay(run.pk))
    return cancelled


def scoring_run_resume(*, run: ScoringRun) -> list[int]:
    """Re-enqueue the chunks with no committed scores (after a killed worker or a failure).

    Safe while the old messages may still arrive: a chunk that is already done does nothing.
    """
    from scoring.tasks import scoring_chunk_execute, scoring_run_execute

    if (run.params or {}).get("bulk"):
        # A bulk rescore (``scoring.bulk_rescore``): its chunks are shards, done by its own tasks.
        from scoring.tasks import bulk_rescore_execute as scoring_run_execute
        from scoring.tasks import bulk_rescore_shard_execute as scoring_chunk_execute
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
        if (run.params or {}).get("load_table"):
            # A bulk rescore whose worker died after its last chunk, before its load table was attached.
            from scoring.tasks import bulk_rescore_finish_task

            transaction.on_commit(lambda: bulk_rescore_finish_task.delay(run.pk))
        else:
            run_finish_if_complete(run.pk)
    return pending


def has_shard_features(*, encoder: str, fingerprint: str) -> bool:
    """Whether the shard pass left by-shard features for this encoder identity (a bulk rescore can run)."""
    from django.conf import settings

    from scoring.shard_features import shard_features_ids

    return bool(shard_features_ids(settings.EMBEDDING_CACHE_DIR, encoder, fingerprint))


def pool_rescore_start(
    *,
    encoder: str | None = None,
    reward_model_version: int | None = None,
    user=None,
    enqueue: bool = True,
    bulk: bool | None = None,
) -> ScoringRun:
    """A rescore of the whole pool. ``bulk=None`` chooses: a bulk rescore (``scoring.bulk_rescore``:
    reward heads over the shard pass's memory-mapped features, no image read) when those features exist
    for the encoder identity, else a scoring run that reads and embeds what the cache lacks. Both are
    ScoringRuns with the same scores; a bulk run is marked ``params["bulk"]``."""
    with transaction.atomic():
        run = scoring_run_start(
            encoder=encoder, reward_model_version=reward_model_version, user=user, enqueue=False
        )
        if bulk is None:
            bulk = has_shard_features(encoder=run.encoder, fingerprint=run.encoder_fingerprint)
        if bulk:
            run.params = {**run.params, "bulk": True}
            run.save(update_fields=["params"])
        if enqueue:
            from scoring.tasks import bulk_rescore_execute, scoring_run_execute

            task = bulk_rescore_execute if bulk else scoring_run_execute
            transaction.on_commit(lambda: task.delay(run.pk))
    return run
