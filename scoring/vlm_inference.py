"""What a judge run's chunk does on a worker: read the chunk's images once, ask the judge MLM-Filter's
four questions in batches (``scoring.vlm``), and upsert the chunk's ``VlmScore`` rows in one
transaction with the chunk's ``done`` flag, so a chunk run twice changes nothing."""

from __future__ import annotations

import io
import logging

from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage

from pool.models import RunStatus
from pool.storage import Locator, locator_read
from scoring.features import pair_rows
from scoring.models import ScoringChunk, ScoringRun, VlmScore
from scoring.services import (
    FINISHED,
    chunk_mark_done,
    run_finish_if_complete,
    scoring_queryset,
    scoring_run_fail,
)

logger = logging.getLogger(__name__)

VLM_UPDATE_FIELDS = ["scorer", "itm", "odf", "ctq", "su", "truncated", "error", "updated_at"]


def image_open(source):
    """(RGB image, "") or (None, the reason it cannot be read): that pair gets an error row.

    ``source`` is a local path or a ``pool.storage.Locator`` (an image indexed in place: tar member,
    Parquet cell or file behind fsspec), so the judge reads the pool where it lives."""
    try:
        if isinstance(source, Locator):
            source = io.BytesIO(locator_read(source))
        with PILImage.open(source) as img:
            return img.convert("RGB"), ""
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a per-pair error, not a failed chunk
        return None, f"unreadable image: {type(exc).__name__}: {exc}"[:500]


def vlm_chunk_score(*, run: ScoringRun, chunk: ScoringChunk, scorer=None) -> str:
    from scoring.vlm import vlm_load

    scorer = scorer or vlm_load(run.encoder)
    caption_ids = (
        scoring_queryset(run)
        .filter(id__gte=chunk.first_id, id__lte=chunk.last_id)
        .values_list("id", flat=True)
    )
    rows = pair_rows(caption_ids)
    images, texts, readable, errors = [], [], [], {}
    for row in rows:
        img, reason = image_open(row.image_path)
        if img is None:
            errors[row.caption_id] = reason
        else:
            images.append(img)
            texts.append(row.text)
            readable.append(row)
    results = scorer.score_pairs(images, texts) if readable else []
    now = timezone.now()
    common = {"scorer": run.encoder, "scorer_fingerprint": scorer.fingerprint, "updated_at": now}
    scores = []
    for row, res in zip(readable, results, strict=True):
        scores.append(
            VlmScore(
                caption_id=row.caption_id,
                itm=res.itm,
                odf=res.odf,
                ctq=res.ctq,
                su=res.su,
                truncated=bool(res.truncated),
                error=(res.error or "")[:500],
                **common,
            )
        )
        if res.error:
            errors.setdefault(row.caption_id, res.error)
    scores += [
        VlmScore(caption_id=cid, error=why, **common)
        for cid, why in errors.items()
        if cid not in {r.caption_id for r in readable}
    ]
    with transaction.atomic():
        if ScoringRun.objects.filter(pk=run.pk, status=RunStatus.CANCELLED).exists():
            return "cancelled"
        VlmScore.objects.bulk_create(
            scores,
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["caption", "scorer_fingerprint"],
            update_fields=VLM_UPDATE_FIELDS,
        )
        marked = chunk_mark_done(run=run, chunk=chunk, pairs=len(scores), failed=len(errors))
    if marked:
        run_finish_if_complete(run.pk)
    return "scored" if marked else "already done"


def vlm_chunk_execute(*, run_id: int, chunk_index: int, scorer=None) -> str:
    run = ScoringRun.objects.get(pk=run_id)
    if run.status in FINISHED:
        return f"run {run.status}"
    chunk = ScoringChunk.objects.get(run=run, index=chunk_index)
    if chunk.done:
        return "already done"
    if scorer is None:
        from scoring.vlm import vlm_load

        scorer = vlm_load(run.encoder)
    if run.encoder_fingerprint and scorer.fingerprint != run.encoder_fingerprint:
        # The judge's files or prompts changed mid-run: judging on would mix two judges under one run.
        scoring_run_fail(
            run_id=run.pk,
            error=f"Judge {run.encoder!r} changed after run {run.pk} started; start a new judge run.",
        )
        return "failed: judge changed"
    return vlm_chunk_score(run=run, chunk=chunk, scorer=scorer)
