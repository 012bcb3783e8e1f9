"""Train a candidate reward model on a campaign's judgments, evaluate it (and the active model) on the
same held-out pairs, register it, and gate it. Runs on workers: it imports the ML code."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import zlib
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone

from annotate.models import Campaign
from pool.models import RunStatus
from scoring.reward_model import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.data import LoadedData, checkpoint_encoder_check, training_data_load
from training.evaluate import reward_model_evaluate
from training.models import RewardModel, TrainingRun
from training.services import RegistryError, active_reward_model, checkpoint_path, gate_tolerance, model_event
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
    encoder = encoder or (run.encoder if run is not None and run.encoder else settings.LOUPE_DEFAULT_ENCODER)
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
        TrainingRun.objects.filter(pk=run.pk).update(done=epoch, total=epochs)
        if progress is not None:
            progress(epoch, epochs, record)

    result = train(config, data, progress=on_epoch)
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
    active = active_reward_model(encoder)
    if active is not None:
        try:
            report["active"] = {"version": active.version, **_headline(_evaluate_registered(active, loaded))}
        except Exception as exc:  # the candidate stays registrable; the gate will refuse to compare
            report["active"] = {"version": active.version, "error": str(exc)}

    model = _register(
        campaign=campaign, encoder=encoder, config=config, result=result, report=report, loaded=loaded
    )
    model_event(
        model,
        "trained",
        f"accuracy {report['accuracy']:.3f} vs CLIPScore {report['clipscore_accuracy'] or 0:.3f} on "
        f"{report['n_pairs']} held-out pairs; {loaded.n_judgments} judgments",
        user,
    )
    _run_update(
        run,
        status=RunStatus.SUCCEEDED,
        model=model,
        finished_at=timezone.now(),
        done=len(result.history),
        total=len(result.history),
        summary={"version": model.version, **_headline(report), "active": report.get("active")},
    )
    return model


def _register(*, campaign, encoder, config, result, report, loaded) -> RewardModel:
    """Allocate the next version, write its checkpoint and the row in one transaction."""
    for _attempt in range(5):
        version = (RewardModel.objects.aggregate(v=Max("version"))["v"] or 0) + 1
        path = checkpoint_path(version)
        try:
            with transaction.atomic():
                model = RewardModel.objects.create(
                    version=version,
                    encoder=encoder,
                    campaign=campaign,
                    checkpoint=str(path),
                    checkpoint_sha256="",
                    config={**asdict(config), "head": asdict(result.model.config)},
                    metrics=report,
                    n_judgments=loaded.n_judgments,
                    n_pairs=loaded.n_pairs,
                )
                model.checkpoint_sha256 = save_checkpoint(
                    path,
                    result.model,
                    {
                        "encoder": encoder,
                        "criteria": list(loaded.data.criteria),
                        "version": version,
                        "campaign": campaign.name,
                        "embed_dim": loaded.data.embed_dim,
                        "trained_at": timezone.now().isoformat(),
                        "n_judgments": loaded.n_judgments,
                    },
                )
                model.save(update_fields=["checkpoint_sha256"])
            return model
        except IntegrityError:
            continue  # another process took this version number: take the next
    raise RegistryError("Could not allocate a reward model version after 5 attempts.")


def reward_model_gate(*, candidate: RewardModel, tolerance: float | None = None, user=None) -> bool:
    """May ``candidate`` become active? Logged either way; promotes nothing itself.

    With an active model: the candidate's held-out accuracy must be at least the active model's on the
    same pairs minus ``tolerance``. The first model of an encoder must beat CLIPScore on those pairs.
    """
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


def _reevaluateactive_reward_model(*, candidate: RewardModel, active: RewardModel) -> tuple[float | None, dict]:
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
