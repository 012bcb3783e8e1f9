"""What a scoring chunk does on a worker: features from the cache (``scoring.features``), cosine and
CLIPScore, the reward model's outputs, and one transaction that upserts the chunk's scores."""

from __future__ import annotations

import numpy as np
import torch
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from pool.models import RunStatus
from pool.run_health import Heartbeat
from scoring.encoder_names import is_vlm
from scoring.encoders import Encoder, EncoderError, encoder_load
from scoring.features import pair_features, pair_rows
from scoring.models import Score, ScoringChunk, ScoringRun
from scoring.services import (
    FINISHED,
    SCORE_UPDATE_FIELDS,
    clipscore,
    judge_identity_record,
    run_finish_if_complete,
    scoring_queryset,
    scoring_run_fail,
    scoring_run_plan,
)


def scorer_load(name: str):
    """The encoder or, for ``vlm:`` names, the multimodal judge a run scores with."""
    if is_vlm(name):
        from scoring.vlm import VlmError, vlm_load

        try:
            return vlm_load(name)
        except VlmError as exc:
            raise EncoderError(str(exc)) from exc
    return encoder_load(name)


# --- reward models ------------------------------------------------------------------------------

_reward_models: dict[tuple[str, str], tuple[torch.nn.Module, dict]] = {}


def reward_model_load(path: str, sha256: str = "") -> tuple[torch.nn.Module, dict]:
    """The checkpoint at ``path``, refused when its bytes are not the ``sha256`` the run recorded (a file
    replaced after the run started must not score under the old model's version)."""
    key = (path, sha256)
    if key not in _reward_models:
        from pool.hashing import file_sha256
        from scoring.reward_model import CheckpointError, load_checkpoint

        if sha256 and file_sha256(path) != sha256:
            raise CheckpointError(
                f"Reward model checkpoint {path} is not the file this run started with (sha256 differs): "
                "it was replaced or damaged. Restore it, or start a new scoring run."
            )
        model, meta = load_checkpoint(path, map_location="cpu")
        model.eval()
        _reward_models[key] = (model, meta)
    return _reward_models[key]


@torch.inference_mode()
def reward_predict(model: torch.nn.Module, image: np.ndarray, text: np.ndarray):
    out = model(torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(text)))
    return out.reward.float().numpy(), out.criteria.float().numpy(), out.uncertainty.float().numpy()


def scoring_chunk_score(*, run_id: int, chunk_index: int, encoder: Encoder | None = None) -> str:
    """Score one chunk. Returns what happened ("scored", "cancelled", "already done", ...)."""
    run = ScoringRun.objects.get(pk=run_id)
    if is_vlm(run.encoder):
        from scoring.vlm_inference import vlm_chunk_execute

        return vlm_chunk_execute(run_id=run_id, chunk_index=chunk_index, scorer=encoder)
    if run.status in FINISHED:
        return f"run {run.status}"
    chunk = ScoringChunk.objects.get(run=run, index=chunk_index)
    if chunk.done:
        return "already done"
    encoder = encoder or encoder_load(run.encoder)
    if encoder.fingerprint != run.encoder_fingerprint:
        # Weights replaced at the same path after the run started: scoring on would mix two models'
        # scores under one run. The scores committed so far stay, keyed by the old fingerprint.
        message = (
            f"The weights of encoder {run.encoder!r} changed after scoring run {run.pk} started "
            f"(fingerprint {run.encoder_fingerprint or '(none)'} -> {encoder.fingerprint or '(none)'}). "
            "Start a new scoring run for the new weights."
        )
        scoring_run_fail(run_id=run.pk, error=message)
        return "failed: encoder weights changed"
    # Alive while computing (the image pass reports per batch) and at the commit below: beat's sweep
    # resumes the run's pending chunks if a killed worker's stamps stop.
    beat = Heartbeat(model=ScoringRun, run_id=run.pk)
    beat()
    caption_ids = (
        scoring_queryset(run)
        .filter(id__gte=chunk.first_id, id__lte=chunk.last_id)
        .values_list("id", flat=True)
    )
    rows = pair_rows(caption_ids)
    feats = pair_features(encoder=encoder, rows=rows, progress=beat)

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
    common = {
        "encoder": run.encoder,
        "encoder_fingerprint": run.encoder_fingerprint,
        "reward_model_version": run.reward_model_version,
        "updated_at": now,
    }
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
            unique_fields=["caption", "encoder", "encoder_fingerprint", "reward_model_version"],
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
                heartbeat_at=now,
            )
    if marked:
        run_finish_if_complete(run.pk)
    return "scored" if marked else "already done"


def scoring_run_sync(*, run: ScoringRun, progress=None) -> ScoringRun:
    """Plan and score every chunk in this process (``score_pool --sync``, benchmarks, tests)."""
    if (run.params or {}).get("bulk"):
        from scoring.bulk_rescore import bulk_rescore_sync

        return bulk_rescore_sync(run=run, progress=progress)
    try:
        encoder = scorer_load(run.encoder)
    except EncoderError as exc:
        scoring_run_fail(run_id=run.pk, error=str(exc))
        raise
    if is_vlm(run.encoder):
        judge_identity_record(run=run, fingerprint=encoder.fingerprint)
    for index in scoring_run_plan(run=run):
        scoring_chunk_score(run_id=run.pk, chunk_index=index, encoder=encoder)
        if progress is not None:
            progress(ScoringRun.objects.get(pk=run.pk))
    run.refresh_from_db()
    return run
