"""Train a candidate reward model on a campaign's judgments, evaluate it (and the active model) on the
same held-out pairs, register it, and gate it. Runs on workers: it imports the ML code."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone

from annotate.models import Campaign
from pool.models import RunStatus
from scoring.active_model import loop_encoder_get
from scoring.reward_model import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.data import LoadedData, checkpoint_encoder_check, training_data_load
from training.evaluate import judge_accuracy, reward_model_evaluate
from training.finetune_config import TrainingCancelled
from training.models import RewardModel, TrainingRun
from training.services import (
    RegistryError,
    active_reward_model,
    checkpoint_path,
    finetune_base_encoder,
    finetune_gate_margin,
    gate_tolerance,
    model_event,
    rescore_cost_note,
)
from training.train import train

logger = logging.getLogger(__name__)

_LOCK_KEY = zlib.crc32(b"loupe-reward-model-training")


class TrainingBusy(RuntimeError):
    """Another training holds the lock."""


@contextlib.contextmanager
def training_lock():
    """Hold the one training lock, or raise TrainingBusy.

    Two trainings must never overlap: they would race for the next version number and double the GPU
    load. PostgreSQL: a session advisory lock (released if the worker's connection dies). SQLite (one
    machine by construction): an exclusive ``flock`` on a file beside the checkpoints, released by the
    kernel if the process dies, so a killed worker never leaves a stale lock behind.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [_LOCK_KEY])
            if not cursor.fetchone()[0]:
                raise TrainingBusy(
                    "Another reward model training is running; try again when it has finished."
                )
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
        return
    model_dir = Path(settings.MODEL_DIR)
    model_dir.mkdir(parents=True, exist_ok=True)
    handle = open(model_dir / ".training.lock", "a+b")  # noqa: SIM115 - closed in finally
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise TrainingBusy(
                "Another reward model training is running; try again when it has finished."
            ) from exc
        yield
    finally:
        handle.close()


def _run_update(run: TrainingRun, **fields) -> None:
    for key, value in fields.items():
        setattr(run, key, value)
    TrainingRun.objects.filter(pk=run.pk).update(**fields)


def _evaluate_registered(model: RewardModel, loaded: LoadedData) -> dict:
    """Evaluate a registered model's checkpoint on the held-out set of ``loaded`` (same pairs)."""
    net, meta = load_checkpoint(model.checkpoint)
    meta = {**meta, "image_dim": net.config.image_dim, "text_dim": net.config.text_dim}
    checkpoint_encoder_check(meta=meta, encoder=loaded.data.encoder, data=loaded.data)
    return reward_model_evaluate(
        net,
        loaded.data,
        loaded.data.test,
        human_ceiling=loaded.data.info.get("human_ceiling"),
        human_ceiling_pairs=loaded.data.info.get("human_ceiling_pairs", 0),
    )


def _judge_baseline(data) -> dict | None:
    """The latest multimodal judge's accuracy on the same held-out pairs (MLM-Filter's ITM and the mean
    of its four metrics), where it judged both captions; None when no judge has scored any of them."""
    from scoring.models import VlmScore

    if data.test is None or not data.test.n_pairs:
        return None
    latest = (
        VlmScore.objects.exclude(scorer_fingerprint="")
        .order_by("-updated_at")
        .values_list("scorer_fingerprint", "scorer")
        .first()
    )
    if latest is None:
        return None
    rows = VlmScore.objects.filter(
        scorer_fingerprint=latest[0], caption_id__in=data.caption_ids, error="", itm__isnull=False
    ).values_list("caption_id", "itm", "odf", "ctq", "su")
    itm = {cid: i for cid, i, *_ in rows}
    mean = {cid: float(np.mean([v for v in (i, o, c, s) if v is not None])) for cid, i, o, c, s in rows}
    accuracy_itm, pairs = judge_accuracy(data, data.test, itm)
    if not pairs:
        return None
    accuracy_mean, _ = judge_accuracy(data, data.test, mean)
    return {"name": latest[1], "itm_accuracy": accuracy_itm, "mean_accuracy": accuracy_mean, "n_pairs": pairs}


def _headline(report: dict) -> dict:
    keys = ("accuracy", "tie_accuracy", "clipscore_accuracy", "ece", "n_pairs")
    return {k: report.get(k) for k in keys}


def reward_model_train(
    *,
    campaign: Campaign,
    encoder: str | None = None,
    config: TrainConfig | None = None,
    user=None,
    run: TrainingRun | None = None,
    progress=None,
) -> RewardModel:
    """Train a candidate on the campaign's judgments, evaluate it and the active model on the same
    held-out pairs, save its checkpoint and register it. The run row carries progress and the error.

    ``progress(epoch, epochs, record)`` is an extra per-epoch callback (the command's tqdm bar).
    """
    encoder = encoder or (run.encoder if run is not None and run.encoder else loop_encoder_get())
    if config is None:
        stored = (run.params or {}).get("config") if run is not None else None
        config = TrainConfig(**stored) if stored else TrainConfig()
    created_here = run is None
    if run is None:
        run = TrainingRun.objects.create(
            campaign=campaign, encoder=encoder, created_by=user, params={"config": asdict(config)}
        )
    try:
        with training_lock():
            if _cancelled(run):
                raise TrainingCancelled("Training was cancelled before it started.")
            params = dict(run.params or {})
            params["config"] = asdict(config)
            _run_update(
                run,
                status=RunStatus.RUNNING,
                started_at=timezone.now(),
                finished_at=None,
                error="",
                done=0,
                total=config.epochs,
                encoder=encoder,
                params=params,
            )
            return _train_locked(
                campaign=campaign, encoder=encoder, config=config, user=user, run=run, progress=progress
            )
    except TrainingBusy as exc:
        # A queued run stays queued for its task to retry; a run made here has no one to retry it.
        if created_here:
            _run_update(run, status=RunStatus.FAILED, error=str(exc), finished_at=timezone.now())
        raise
    except TrainingCancelled as exc:
        TrainingRun.objects.filter(pk=run.pk).update(
            status=RunStatus.CANCELLED, finished_at=timezone.now(), log=f"{run.log}\n{exc}".strip()
        )
        logger.info("training run %s: %s", run.pk, exc)
        raise
    except Exception as exc:
        _run_update(run, status=RunStatus.FAILED, error=f"{exc}"[:4000], finished_at=timezone.now())
        logger.warning("training run %s failed: %s", run.pk, exc)
        raise


def _train_locked(*, campaign, encoder, config, user, run, progress) -> RewardModel:
    loaded = training_data_load(campaign=campaign, encoder=encoder)
    data = loaded.data
    lines = [
        f"{loaded.n_judgments} judgments, {loaded.n_pairs} pairs "
        f"(train {data.train.n_pairs}, validation {data.validation.n_pairs if data.validation else 0}, "
        f"test {data.test.n_pairs}); images per split {data.info['images']}"
    ]
    if loaded.dropped_captions:
        lines.append(f"{len(loaded.dropped_captions)} captions without features left out")
    _run_update(run, log="\n".join(lines))

    def on_epoch(epoch: int, epochs: int, record: dict) -> None:
        TrainingRun.objects.filter(pk=run.pk).update(done=epoch, total=epochs, heartbeat_at=timezone.now())
        if progress is not None:
            progress(epoch, epochs, record)

    # Re-read between epochs: a cancel from the page, the API or the loop chain (loop_cancel cancels
    # the chain's training run) stops training at the next epoch, and no model is registered.
    result = train(config, data, progress=on_epoch, should_stop=lambda: _cancelled(run))
    report = reward_model_evaluate(
        result.model,
        data,
        data.test,
        human_ceiling=data.info.get("human_ceiling"),
        human_ceiling_pairs=data.info.get("human_ceiling_pairs", 0),
    )
    report["split"] = {
        "judgments": data.info["judgments"],
        "images": data.info["images"],
        "mode": data.info["mode"],
    }
    report["best_epoch"] = result.best_epoch
    report["epochs_run"] = len(result.history)
    report["train_seconds"] = round(result.seconds, 2)
    report["history"] = result.history
    report["judge"] = _judge_baseline(data)
    active = active_reward_model(encoder)
    if active is not None:
        try:
            report["active"] = {"version": active.version, **_headline(_evaluate_registered(active, loaded))}
        except Exception as exc:  # the candidate stays registrable; the gate will refuse to compare
            report["active"] = {"version": active.version, "error": str(exc)}

    model = _register(
        campaign=campaign,
        encoder=encoder,
        config=config,
        result=result,
        report=report,
        loaded=loaded,
        run=run,
        user=user,
    )
    return model


def _judgments_lineage(loaded: LoadedData) -> dict:
    """Which judgments a model was trained on, exactly: exports copy this into their manifests."""
    return {
        "count": loaded.n_judgments,
        "pairs": loaded.n_pairs,
        "last_judgment_id": loaded.last_judgment_id,
        "sha256": loaded.judgments_sha256,
    }


def _cancelled(run: TrainingRun) -> bool:
    return TrainingRun.objects.filter(pk=run.pk, status=RunStatus.CANCELLED).exists()


def _register(
    *, campaign, encoder, config, result, report, loaded, run: TrainingRun, user=None
) -> RewardModel:
    """Register frozen heads trained on ``encoder``'s cached features (see ``_register_model``)."""
    return _register_model(
        campaign=campaign,
        encoder=encoder,
        fingerprint=loaded.encoder_fingerprint,
        net=result.model,
        config={
            **asdict(config),
            "head": asdict(result.model.config),
            "judgments": _judgments_lineage(loaded),
        },
        report=report,
        loaded=loaded,
        meta={"embed_dim": loaded.data.embed_dim},
        run=run,
        epochs=len(result.history),
        summary={"version": None, **_headline(report), "active": report.get("active")},
        event=(
            f"accuracy {report['accuracy']:.3f} vs CLIPScore {report['clipscore_accuracy'] or 0:.3f} "
            f"on {report['n_pairs']} held-out pairs; {loaded.n_judgments} judgments"
        ),
        user=user,
    )


def _register_model(
    *,
    campaign,
    encoder,
    fingerprint,
    net,
    config,
    report,
    loaded,
    meta,
    run=None,
    epochs=0,
    summary=None,
    event: str | None = None,
    user=None,
) -> RewardModel:
    """Allocate the next version, write its checkpoint and the row, and mark the run succeeded, in one
    transaction that holds the run's row: a cancel either lands first (nothing is registered) or
    finds the run finished (the model was registered before the cancel arrived)."""
    for _attempt in range(5):
        version = (RewardModel.objects.aggregate(v=Max("version"))["v"] or 0) + 1
        path = checkpoint_path(version)
        try:
            with transaction.atomic():
                if run is not None:
                    locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
                    if locked.status == RunStatus.CANCELLED:
                        raise TrainingCancelled("Training was cancelled before its model was registered.")
                model = RewardModel.objects.create(
                    version=version,
                    encoder=encoder,
                    encoder_fingerprint=fingerprint,
                    campaign=campaign,
                    checkpoint=str(path),
                    checkpoint_sha256="",
                    config=config,
                    metrics=report,
                    n_judgments=loaded.n_judgments,
                    n_pairs=loaded.n_pairs,
                )
                model.checkpoint_sha256 = save_checkpoint(
                    path,
                    net,
                    {
                        "encoder": encoder,
                        "criteria": list(loaded.data.criteria),
                        "version": version,
                        "campaign": campaign.name,
                        "trained_at": timezone.now().isoformat(),
                        "n_judgments": loaded.n_judgments,
                        # Scoring refuses these heads on features of other weights behind the name.
                        "encoder_fingerprint": fingerprint,
                        "judgments": _judgments_lineage(loaded),
                        **meta,
                    },
                )
                model.save(update_fields=["checkpoint_sha256"])
                if event is not None:
                    # In the same transaction: whoever sees the run succeeded also sees the model's event.
                    model_event(model, "trained", event, user)
                if run is not None:
                    _run_update(
                        run,
                        status=RunStatus.SUCCEEDED,
                        model=model,
                        finished_at=timezone.now(),
                        done=epochs,
                        total=epochs,
                        summary={**(summary or {}), "version": model.version},
                    )
            return model
        except IntegrityError:
            continue  # another process took this version number: take the next
    raise RegistryError("Could not allocate a reward model version after 5 attempts.")


def reward_model_gate(*, candidate: RewardModel, tolerance: float | None = None, user=None) -> bool:
    """May ``candidate`` become active? Logged either way; promotes nothing itself.

    With an active model: the candidate's held-out accuracy must be at least the active model's on the
    same pairs minus ``tolerance``. The first model of an encoder must beat CLIPScore on those pairs.
    A fine-tuned candidate is compared with the active model of its BASE encoder instead and must beat
    it by ``finetune_gate_margin()`` (promoting it means re-encoding the pool).
    """
    if finetune_base_encoder(candidate):
        return _finetune_gate(candidate=candidate, user=user)
    tolerance = gate_tolerance() if tolerance is None else float(tolerance)
    metrics = candidate.metrics or {}
    accuracy = metrics.get("accuracy")
    active = active_reward_model(candidate.encoder)
    if accuracy is None:
        passed, note = False, "refused: the candidate has no held-out accuracy"
    elif active is None or active.pk == candidate.pk:
        baseline = metrics.get("clipscore_accuracy")
        passed = baseline is None or accuracy > baseline
        note = f"first model: accuracy {accuracy:.3f} vs CLIPScore {baseline if baseline is None else round(baseline, 3)}"
    else:
        compared = metrics.get("active") or {}
        if compared.get("version") != active.version or compared.get("accuracy") is None:
            fresh_accuracy, compared = _reevaluateactive_reward_model(candidate=candidate, active=active)
            accuracy = fresh_accuracy if fresh_accuracy is not None else accuracy
        active_accuracy = compared.get("accuracy")
        if active_accuracy is None:
            passed = False
            note = (
                f"could not evaluate active v{active.version} on the same pairs: {compared.get('error', '?')}"
            )
        else:
            passed = accuracy >= active_accuracy - tolerance
            note = (
                f"accuracy {accuracy:.3f} vs active v{active.version} {active_accuracy:.3f} "
                f"on the same held-out pairs (tolerance {tolerance:.3f})"
            )
    metrics["gate"] = {
        "passed": passed,
        "note": note,
        "tolerance": tolerance,
        "at": timezone.now().isoformat(),
    }
    RewardModel.objects.filter(pk=candidate.pk).update(metrics=metrics)
    candidate.metrics = metrics
    model_event(candidate, "gate_passed" if passed else "gate_refused", note, user)
    return passed


def _finetune_gate(*, candidate: RewardModel, user=None) -> bool:
    """A fine-tuned candidate against the active frozen-head model of its base encoder, on the same
    held-out pairs: it must WIN by the margin, not merely not lose. With no active model of the base
    encoder it must beat CLIPScore (on its own features) by the margin."""
    margin = finetune_gate_margin()
    base = finetune_base_encoder(candidate)
    metrics = candidate.metrics or {}
    accuracy = metrics.get("accuracy")
    active = active_reward_model(base)
    cost = rescore_cost_note()
    if accuracy is None:
        passed, note = False, "refused: the fine-tuned candidate has no held-out accuracy"
    elif active is None:
        baseline = metrics.get("clipscore_accuracy")
        passed = baseline is None or accuracy >= baseline + margin
        shown = "n/a" if baseline is None else f"{baseline:.3f}"
        note = (
            f"fine-tuned from {base}, which has no active model: accuracy {accuracy:.3f} vs CLIPScore "
            f"{shown} (margin {margin:.3f})"
        )
    else:
        compared = metrics.get("active") or {}
        if compared.get("version") != active.version or compared.get("accuracy") is None:
            fresh_accuracy, compared = _reevaluate_against_base(candidate=candidate, active=active)
            accuracy = fresh_accuracy if fresh_accuracy is not None else accuracy
        active_accuracy = compared.get("accuracy")
        if active_accuracy is None:
            passed = False
            note = (
                f"could not evaluate the base encoder's active v{active.version} on the same pairs: "
                f"{compared.get('error', '?')}"
            )
        else:
            passed = accuracy >= active_accuracy + margin
            note = (
                f"fine-tuned: accuracy {accuracy:.3f} vs the base encoder's active v{active.version} "
                f"{active_accuracy:.3f} on the same held-out pairs; needs +{margin:.3f}"
            )
    note = f"{note}. Promoting it re-encodes the pool: {cost}"
    metrics["gate"] = {
        "passed": passed,
        "note": note,
        "margin": margin,
        "base_encoder": base,
        "rescore_cost": cost,
        "at": timezone.now().isoformat(),
    }
    RewardModel.objects.filter(pk=candidate.pk).update(metrics=metrics)
    candidate.metrics = metrics
    model_event(candidate, "gate_passed" if passed else "gate_refused", note, user)
    return passed


def _reevaluate_against_base(*, candidate: RewardModel, active: RewardModel) -> tuple[float | None, dict]:
    """The base encoder's active model changed since the fine-tune: measure the candidate on its own
    encoder's features and the active model on the base encoder's, over the campaign's current
    held-out pairs (the same image-hash split)."""
    base = finetune_base_encoder(candidate)
    if candidate.campaign is None:
        return None, {"version": active.version, "error": "the candidate's campaign was deleted"}
    try:
        mine = _evaluate_registered(
            candidate, training_data_load(campaign=candidate.campaign, encoder=candidate.encoder)
        )
        theirs = _evaluate_registered(active, training_data_load(campaign=candidate.campaign, encoder=base))
    except Exception as exc:
        return None, {"version": active.version, "error": str(exc)}
    return mine["accuracy"], {"version": active.version, "encoder": base, **_headline(theirs)}


def _reevaluateactive_reward_model(
    *, candidate: RewardModel, active: RewardModel
) -> tuple[float | None, dict]:
    """The active model changed since the candidate was trained: measure both on the candidate's
    campaign's current held-out pairs so the comparison stays like for like."""
    if candidate.campaign is None:
        return None, {"version": active.version, "error": "the candidate's campaign was deleted"}
    try:
        loaded = training_data_load(campaign=candidate.campaign, encoder=candidate.encoder)
        mine = _evaluate_registered(candidate, loaded)
        theirs = _evaluate_registered(active, loaded)
    except Exception as exc:
        return None, {"version": active.version, "error": str(exc)}
    return mine["accuracy"], {"version": active.version, **_headline(theirs)}


# --- fine-tuning the encoder ------------------------------------------------------------------------


def _finetune_data_load(*, campaign: Campaign, encoder: str):
    """The campaign's judgments as ``FinetuneData``: the same records, minimum and image-hash split as
    ``training_data_load``, with each caption's image read from the pool (wherever it lives) and its
    text instead of cached features. Captions whose image cannot be read drop out of the rankings."""
    from PIL import Image as PILImage

    from pool.locate import image_read
    from pool.models import Caption
    from training.data import _JudgmentDigest, _without, judgment_records, min_judgments, split_fractions
    from training.finetune import finetune_data_build
    from training.pairs import JudgmentRecord, human_agreement, image_split

    digest = _JudgmentDigest()
    records = judgment_records(campaign=campaign, digest=digest)
    caption_ids = sorted({int(c) for r in records for tier in r.ranking for c in tier})
    captions = (
        Caption.objects.filter(pk__in=caption_ids).select_related("image", "image__shard").order_by("pk")
    )
    pictures: dict[int, object] = {}
    unreadable: dict[int, str] = {}
    rows = []
    for caption in captions:
        image = caption.image
        if image.pk not in pictures and image.pk not in unreadable:
            try:
                pictures[image.pk] = PILImage.open(io.BytesIO(image_read(image))).convert("RGB")
            except Exception as exc:  # noqa: BLE001 - any unreadable image drops out, with the reason logged
                unreadable[image.pk] = str(exc)
                logger.warning("fine-tuning data: image %s unreadable: %s", image.sha256, exc)
        if image.pk in pictures:
            rows.append((caption.pk, image.sha256, pictures[image.pk], caption.text))
    missing = set(caption_ids) - {r[0] for r in rows}
    if missing:
        records = [
            JudgmentRecord(r.task_id, r.user_id, _without(r.ranking, missing), r.ratings, r.image_key)
            for r in records
        ]
        records = [r for r in records if sum(len(t) for t in r.ranking) >= 2]
    validation_fraction, test_fraction = split_fractions()
    data = finetune_data_build(
        judgments=records,
        caption_ids=[r[0] for r in rows],
        row_image_keys=[r[1] for r in rows],
        row_images=[r[2] for r in rows],
        texts=[r[3] for r in rows],
        criteria=campaign.criterion_keys,
        mode=campaign.consensus_mode,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        min_judgments=min_judgments(),
        campaign=campaign.name,
    )
    pairs = data.pairs
    test_records = [
        r for r in records if image_split(r.image_key, validation_fraction, test_fraction) == "test"
    ]
    ceiling, ceiling_pairs = human_agreement(test_records)
    pairs.info.update(
        human_ceiling=None if np.isnan(ceiling) else ceiling,
        human_ceiling_pairs=ceiling_pairs,
        dropped_captions=len(missing),
    )
    loaded = LoadedData(
        data=pairs,
        n_judgments=len(records),
        n_pairs=pairs.train.n_pairs
        + (pairs.validation.n_pairs if pairs.validation else 0)
        + (pairs.test.n_pairs if pairs.test else 0),
        test_judgments=test_records,
        dropped_captions=sorted(missing),
        judgments_sha256=digest.sha.hexdigest(),
        last_judgment_id=digest.last_id,
    )
    return data, loaded


def reward_model_finetune(
    *,
    campaign: Campaign,
    base_encoder: str,
    finetune_config: dict,
    user=None,
    run: TrainingRun | None = None,
    progress=None,
) -> RewardModel:
    """Fine-tune ``base_encoder`` with fresh heads on the campaign's judgments and register the result
    as a candidate of the NEW encoder it makes, compared with the active frozen-head model of the base
    encoder on the same held-out pairs. The run row carries progress, the error, or the cancellation
    (``TrainingCancelled``: nothing is registered).

    ``finetune_config``: ``FinetuneConfig`` fields except encoder, output_dir and run_name (the run's).
    """
    from training.finetune import TrainingCancelled
    from training.finetune_config import finetune_params_check

    created_here = run is None
    if run is None:
        run = TrainingRun.objects.create(
            campaign=campaign, encoder=base_encoder, created_by=user, params={"finetune": finetune_config}
        )
    try:
        params_ft = finetune_params_check(dict(finetune_config), base_encoder=base_encoder)
        with training_lock():
            params = dict(run.params or {})
            params["finetune"] = params_ft
            _run_update(
                run,
                status=RunStatus.RUNNING,
                started_at=timezone.now(),
                finished_at=None,
                error="",
                done=0,
                total=params_ft.get("epochs", 5),
                encoder=base_encoder,
                params=params,
            )
            return _finetune_locked(
                campaign=campaign,
                base_encoder=base_encoder,
                params_ft=params_ft,
                user=user,
                run=run,
                progress=progress,
            )
    except TrainingBusy as exc:
        if created_here:
            _run_update(run, status=RunStatus.FAILED, error=str(exc), finished_at=timezone.now())
        raise
    except TrainingCancelled as exc:
        _run_update(run, status=RunStatus.CANCELLED, log=str(exc), finished_at=timezone.now())
        logger.info("training run %s cancelled: %s", run.pk, exc)
        raise
    except Exception as exc:
        _run_update(run, status=RunStatus.FAILED, error=f"{exc}"[:4000], finished_at=timezone.now())
        logger.warning("fine-tuning run %s failed: %s", run.pk, exc)
        raise


def _finetune_locked(*, campaign, base_encoder, params_ft, user, run, progress) -> RewardModel:
    from training.finetune import FinetuneConfig, finetune

    data, loaded = _finetune_data_load(campaign=campaign, encoder=base_encoder)
    pairs = data.pairs
    _run_update(
        run,
        log=(
            f"fine-tuning {base_encoder} ({params_ft.get('mode', 'last_blocks')}): {loaded.n_judgments} "
            f"judgments, {loaded.n_pairs} pairs (train {pairs.train.n_pairs}, validation "
            f"{pairs.validation.n_pairs if pairs.validation else 0}, test "
            f"{pairs.test.n_pairs if pairs.test else 0}); {len(data.images)} images"
        ),
    )
    config = FinetuneConfig(
        encoder=base_encoder,
        output_dir=str(Path(settings.MODEL_DIR) / "encoders"),
        run_name=f"ft-run{run.pk}",
        **params_ft,
    )

    def on_epoch(epoch: int, epochs: int, record: dict) -> None:
        TrainingRun.objects.filter(pk=run.pk).update(done=epoch, total=epochs, heartbeat_at=timezone.now())
        if progress is not None:
            progress(epoch, epochs, record)

    def cancelled() -> bool:
        # Re-read every epoch: the console's cancel only flips the row's status.
        return TrainingRun.objects.filter(pk=run.pk, status=RunStatus.CANCELLED).exists()

    result = finetune(config, data, progress=on_epoch, should_cancel=cancelled)
    loaded.encoder_fingerprint = result.fingerprint
    report = dict(result.test_report or {})
    report["split"] = {k: pairs.info.get(k) for k in ("judgments", "images", "mode")}
    report["best_epoch"] = result.best_epoch
    report["epochs_run"] = len(result.history)
    report["train_seconds"] = round(result.seconds, 2)
    report["history"] = result.history
    report["finetune"] = {
        "base_encoder": base_encoder,
        "mode": config.mode,
        "towers": list(config.towers),
        "blocks": config.blocks,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha} if config.mode == "lora" else None,
        "trainable_parameters": result.trainable_parameters,
        "head_parameters": result.head_parameters,
        "seconds_per_epoch": round(float(np.mean(result.epoch_seconds)), 3) if result.epoch_seconds else None,
        "peak_memory_mb": result.peak_memory_mb,
        "peak_memory_source": result.peak_memory_source,
        "gradient_checkpointing": result.gradient_checkpointing,
        "encoder_path": result.encoder_path,
        "fingerprint": result.fingerprint,
    }
    report["judge"] = _judge_baseline(pairs)
    # The bar it must clear: the active frozen-head model of the BASE encoder, on the same held-out
    # judgments (the split is by image hash, so training_data_load's test pairs are these pairs).
    active = active_reward_model(base_encoder)
    if active is not None:
        try:
            base_loaded = training_data_load(campaign=campaign, encoder=base_encoder)
            report["active"] = {
                "version": active.version,
                "encoder": base_encoder,
                **_headline(_evaluate_registered(active, base_loaded)),
            }
        except Exception as exc:  # the candidate stays registrable; the gate will refuse to compare
            report["active"] = {"version": active.version, "encoder": base_encoder, "error": str(exc)}

    head_config = asdict(config)
    head_config.pop("meta", None)
    model = _register_model(
        campaign=campaign,
        encoder=result.encoder_name,
        fingerprint=result.fingerprint,
        net=result.model,
        config={
            **head_config,
            "base_encoder": base_encoder,
            "head": asdict(result.model.config),
            "judgments": _judgments_lineage(loaded),
        },
        report=report,
        loaded=loaded,
        meta={
            "embed_dim": result.encoder.embed_dim,
            "image_dim": result.encoder.image_feature_dim,
            "text_dim": result.encoder.text_feature_dim,
            "base_encoder": base_encoder,
        },
        run=run,
        epochs=len(result.history),
        summary={"encoder": result.encoder_name, **_headline(report), "active": report.get("active")},
    )
    accuracy = report.get("accuracy")
    versus = report.get("active") or {}
    model_event(
        model,
        "trained",
        f"fine-tuned {base_encoder} ({config.mode}): accuracy "
        f"{'n/a' if accuracy is None else f'{accuracy:.3f}'} on {report.get('n_pairs')} held-out pairs"
        + (
            f" vs active v{versus['version']} of the base encoder {versus['accuracy']:.3f}"
            if versus.get("accuracy") is not None
            else ""
        ),
        user,
    )
    return model
