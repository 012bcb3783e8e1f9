"""The loop's orchestration: when to retrain, and the chain that follows a retrain.

The chain (one ``LoopRun`` row per pass; ``step`` is the last step that finished)::

    retrain -> evaluate -> gate -> rescore -> priorities -> flags -> filter

- ``retrain`` (gpu): a candidate reward model from the campaign's judgments (a ``TrainingRun``).
- ``evaluate``: the candidate's held-out metrics next to CLIPScore's and the active model's.
- ``gate``: promote the candidate only if the gate passes; otherwise the active model stays.
- ``rescore`` (gpu): only after a promotion: a ``ScoringRun`` of the whole pool with the new model;
  the step waits for it (the task re-enqueues itself every few seconds; no result backend needed).
- ``priorities`` (gpu, it may embed): active-learning priorities for the campaign's open tasks.
- ``flags``: curator flags recomputed for the active model (skipped when nothing was promoted).
- ``filter``: a filter run with the rule given at start (optional).

Every step is a Celery task that re-reads the row, runs the step, records it and enqueues the next;
a failed step sets ``status=failed`` and ``error`` and stops there (the active model changes only in
``gate``, so a failed retrain never touches it). ``loop_resume`` starts again after the last finished
step. Only one chain exists at a time: ``loop_start`` and ``loop_resume`` take a database lock, look
for an unfinished ``LoopRun`` and refuse (``LoopBusy``) if there is one. Beat's ``loop_tick`` goes
through the same door, so ticks that piled up while the worker was down find the queued chain and do
nothing.
"""

from __future__ import annotations

import contextvars
import logging
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from annotate.models import Campaign, Judgment, Task, TaskStatus
from pool.models import RunStatus
from training.active_learning import DEFAULT_MIX, mix_normalise, priorities_mix, strategy_scores
from training.models import LoopRun, ModelStatus, RewardModel, TrainingRun

logger = logging.getLogger(__name__)

STEPS = ("retrain", "evaluate", "gate", "rescore", "priorities", "flags", "filter")
# Steps whose work needs the encoder or the training loop: they run on GPU workers.
GPU_STEPS = frozenset({"retrain", "rescore", "priorities"})
UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)

# Retrain once this many judgments arrived since the last model trained for the campaign (promoted or
# not: a candidate the gate refused is not retrained every tick on the same data). A campaign
# overrides it with ``selection_mix["retrain_after"]``. 50 judgments of 4 captions are 300 ranked
# pairs: enough to move a small head, few enough that annotators see the queue adapt within a session.
DEFAULT_RETRAIN_AFTER = 50
# How many tasks head the queue after a refresh (the active-learning batch); the rest is ordered by
# the blended scores. Overridden by ``selection_mix["batch_size"]``.
DEFAULT_BATCH_SIZE = 100
# Seconds between checks while the rescore step waits for its scoring run.
POLL_SECONDS = 5.0
# Labelled tasks used as k-center's initial centres (most recent first): bounds the cost on big campaigns.
MAX_LABELLED_CENTRES = 5000
# Any constant works; it names the PostgreSQL advisory lock that serialises chain starts.
_LOCK_KEY = zlib.crc32(b"loupe.loop_chain")


# Set while ``loop_run_inline`` drives a chain: work a step would hand to workers (the pool's scoring
# run) is done in this process instead.
_INLINE = contextvars.ContextVar("loop_inline", default=False)


class LoopBusy(Exception):
    """A chain is already queued or running; another one would overlap it."""


class LoopError(Exception):
    """A step cannot go on; the message says why, in words for the console."""


@dataclass(frozen=True)
class Wait:
    """A step's answer while it waits for work it started elsewhere (the pool's scoring run)."""

    note: str


# --- starting, stopping, resuming ----------------------------------------------------------------


def _chain_lock() -> None:
    """Serialise chain starts for the rest of the current transaction.

    PostgreSQL: a transaction-scoped advisory lock (two concurrent starts queue here, the second then
    sees the first one's row). SQLite: the settings open every transaction with BEGIN IMMEDIATE, which
    already holds the database's single write lock until commit.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])


def loop_unfinished() -> LoopRun | None:
    return LoopRun.objects.filter(status__in=UNFINISHED).order_by("created_at").first()


def _busy_message(run: LoopRun) -> str:
    where = f"after step '{run.step}'" if run.step else "before its first step"
    return (
        f"Loop run {run.pk} for campaign '{run.campaign}' is already {run.status} ({where}); "
        "wait for it to finish or cancel it on the jobs page."
    )


def retrain_after(campaign: Campaign) -> int:
    value = (campaign.selection_mix or {}).get("retrain_after", DEFAULT_RETRAIN_AFTER)
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return DEFAULT_RETRAIN_AFTER


def loop_should_run(*, campaign: Campaign, encoder: str | None = None) -> tuple[bool, str]:
    """Whether enough judgments arrived since the last model trained for this campaign and encoder."""
    encoder = encoder or settings.LOUPE_DEFAULT_ENCODER
    if not campaign.is_active:
        return False, f"campaign '{campaign}' is not active"
    threshold = retrain_after(campaign)
    latest = RewardModel.objects.filter(campaign=campaign, encoder=encoder).order_by("-created_at").first()
    judgments = Judgment.objects.filter(task__campaign=campaign)
    if latest is not None:
        judgments = judgments.filter(created_at__gt=latest.created_at)
    new = judgments.count()
    since = f"since v{latest.version} was trained" if latest else "and no model trained yet"
    if new < threshold:
        return False, f"{new} new judgments {since}; retraining needs {threshold}"
    return True, f"{new} new judgments {since} (threshold {threshold})"


def loop_start(
    *,
    campaign: Campaign,
    trigger: str = "manual",
    user=None,
    encoder: str | None = None,
    filter_rule: dict | None = None,
    train_config: dict | None = None,
    enqueue: bool = True,
) -> LoopRun:
    """Create a queued chain and enqueue its first step once committed; ``LoopBusy`` if one exists."""
    encoder = encoder or settings.LOUPE_DEFAULT_ENCODER
    with transaction.atomic():
        _chain_lock()
        busy = loop_unfinished()
        if busy is not None:
            raise LoopBusy(_busy_message(busy))
        run = LoopRun.objects.create(
            campaign=campaign,
            trigger=trigger,
            created_by=user if user is not None and user.is_authenticated else None,
            total=len(STEPS),
            params={
                "encoder": encoder,
                "filter_rule": filter_rule or None,
                "train_config": train_config or None,
            },
        )
        _log(run, f"queued ({trigger}) for campaign '{campaign}' with encoder {encoder}")
        run.save(update_fields=["log"])
        if enqueue:
            transaction.on_commit(lambda: loop_enqueue(run=run, step=STEPS[0]))
    return run


def loop_next_step(run: LoopRun) -> str | None:
    if not run.step:
        return STEPS[0]
    index = STEPS.index(run.step)
    return STEPS[index + 1] if index + 1 < len(STEPS) else None


def loop_enqueue(*, run: LoopRun, step: str, countdown: float | None = None) -> None:
    from training.loop_tasks import loop_step_task

    loop_step_task.apply_async(
        args=[run.pk, step], queue="gpu" if step in GPU_STEPS else "default", countdown=countdown
    )


def loop_resume(*, run: LoopRun, user=None, enqueue: bool = True) -> LoopRun:
    """Retry a failed or cancelled chain from the step after the last one that finished."""
    with transaction.atomic():
        _chain_lock()
        run = LoopRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise LoopError(
                f"Loop run {run.pk} is {run.status}; only a failed or cancelled run can be resumed."
            )
        busy = loop_unfinished()
        if busy is not None:
            raise LoopBusy(_busy_message(busy))
        step = loop_next_step(run)
        who = f" by {user.username}" if user is not None and user.is_authenticated else ""
        if step is None:
            run.status, run.finished_at = RunStatus.SUCCEEDED, timezone.now()
            _log(run, f"resumed{who}: every step had finished")
        else:
            run.status, run.error, run.finished_at = RunStatus.QUEUED, "", None
            _log(run, f"resumed{who} at step '{step}'")
            if enqueue:
                transaction.on_commit(lambda: loop_enqueue(run=run, step=step))
        run.save(update_fields=["status", "error", "finished_at", "log"])
    return run


def loop_cancel(*, run: LoopRun, user=None) -> LoopRun:
    """Stop a chain: the next step task sees the status and does nothing; child runs are cancelled too."""
    with transaction.atomic():
        run = LoopRun.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            return run
        run.status, run.finished_at = RunStatus.CANCELLED, timezone.now()
        who = f" by {user.username}" if user is not None and user.is_authenticated else ""
        _log(run, f"cancelled{who} after step '{run.step or '-'}'")
        run.save(update_fields=["status", "finished_at", "log"])
        for child in _children(run):
            if not child.is_finished:
                type(child).objects.filter(pk=child.pk, status__in=UNFINISHED).update(
                    status=RunStatus.CANCELLED, finished_at=timezone.now()
                )
    return run


def loop_tick(*, filter_rule: dict | None = None) -> str:
    """Beat's entry: start at most one chain, for the first active campaign that needs a retrain.

    ``filter_rule`` (the periodic task's kwargs, editable in the admin) adds a filter run to the chain.
    """
    busy = loop_unfinished()
    if busy is not None:
        return f"busy: {_busy_message(busy)}"
    for campaign in Campaign.objects.filter(is_active=True).order_by("id"):
        should, reason = loop_should_run(campaign=campaign)
        if not should:
            continue
        try:
            run = loop_start(campaign=campaign, trigger="beat", filter_rule=filter_rule)
        except LoopBusy as exc:
            return f"busy: {exc}"
        return f"started loop run {run.pk} for '{campaign}': {reason}"
    return "nothing to do: no campaign has enough new judgments"


# --- running steps -------------------------------------------------------------------------------


def _log(run: LoopRun, line: str) -> None:
    stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
    run.log = f"{run.log}{stamp} {line}\n"


def _params_update(run: LoopRun, **values) -> None:
    """Persist step outputs at once, so a retry after a crash finds what was already started."""
    with transaction.atomic():
        fresh = LoopRun.objects.select_for_update().get(pk=run.pk)
        fresh.params = {**fresh.params, **values}
        fresh.save(update_fields=["params"])
    run.params = fresh.params


def _summary_update(run: LoopRun, **values) -> None:
    with transaction.atomic():
        fresh = LoopRun.objects.select_for_update().get(pk=run.pk)
        fresh.summary = {**fresh.summary, **values}
        fresh.save(update_fields=["summary"])
    run.summary = fresh.summary


def _children(run: LoopRun) -> list:
    from scoring.models import FilterRun, ScoringRun

    found = []
    for key, model in (
        ("training_run_id", TrainingRun),
        ("scoring_run_id", ScoringRun),
        ("filter_run_id", FilterRun),
    ):
        if run.params.get(key):
            child = model.objects.filter(pk=run.params[key]).first()
            if child is not None:
                found.append(child)
    return found


def loop_step_execute(*, run_id: int, step: str) -> str | Wait | None:
    """Run one step of a chain. Returns the next step to enqueue, a ``Wait`` or None (stop).

    Safe to run twice: a step that is not the run's next step (already done, or the run was
    cancelled or failed meanwhile) does nothing.
    """
    with transaction.atomic():
        run = LoopRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status not in UNFINISHED or loop_next_step(run) != step:
            return None
        if run.status == RunStatus.QUEUED:
            run.status, run.started_at = RunStatus.RUNNING, run.started_at or timezone.now()
            run.save(update_fields=["status", "started_at"])
    try:
        outcome = STEP_FUNCTIONS[step](run)
    except Exception as exc:  # noqa: BLE001 - any failure stops the chain with the error shown
        logger.exception("loop run %s failed in step %s", run_id, step)
        loop_fail(run_id=run_id, step=step, error=exc)
        return None
    if isinstance(outcome, Wait):
        return outcome
    with transaction.atomic():
        run = LoopRun.objects.select_for_update().get(pk=run_id)
        if run.status not in UNFINISHED:
            return None  # cancelled while the step ran: keep the step's work, start nothing more
        run.step = step
        run.done = STEPS.index(step) + 1
        _log(run, f"{step}: {outcome or 'done'}")
        following = loop_next_step(run)
        if following is None:
            run.status, run.finished_at = RunStatus.SUCCEEDED, timezone.now()
            _log(run, "chain finished")
        run.save(update_fields=["step", "done", "log", "status", "finished_at"])
    return following


def loop_fail(*, run_id: int, step: str, error: BaseException | str) -> None:
    text = str(error) if isinstance(error, LoopError | str) else f"{type(error).__name__}: {error}"
    with transaction.atomic():
        run = LoopRun.objects.select_for_update().get(pk=run_id)
        if run.is_finished:
            return
        run.status, run.finished_at = RunStatus.FAILED, timezone.now()
        run.error = f"Step '{step}' failed: {text}"
        _log(run, run.error)
        if not isinstance(error, LoopError | str):
            tail = "".join(traceback.format_exception(error)[-6:])
            run.log += tail if tail.endswith("\n") else tail + "\n"
        run.save(update_fields=["status", "finished_at", "error", "log"])


def loop_run_inline(*, run: LoopRun, poll_seconds: float = 1.0, timeout: float | None = None) -> LoopRun:
    """Run a chain's remaining steps in this process (``run_loop --sync`` and tests)."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    token = _INLINE.set(True)
    try:
        step = loop_next_step(run)
        while step is not None:
            outcome = loop_step_execute(run_id=run.pk, step=step)
            if isinstance(outcome, Wait):
                if deadline is not None and time.monotonic() > deadline:
                    loop_fail(run_id=run.pk, step=step, error=LoopError(f"timed out waiting: {outcome.note}"))
                    break
                time.sleep(poll_seconds)
                continue
            step = outcome
    finally:
        _INLINE.reset(token)
    run.refresh_from_db()
    return run


# --- the steps -----------------------------------------------------------------------------------


def _encoder(run: LoopRun) -> str:
    return run.params.get("encoder") or settings.LOUPE_DEFAULT_ENCODER


def _candidate(run: LoopRun) -> RewardModel:
    candidate = RewardModel.objects.filter(pk=run.params.get("candidate_id")).first()
    if candidate is None:
        raise LoopError("the retrain step left no candidate model; resume the run to train again.")
    return candidate


def _active_model(encoder: str) -> RewardModel | None:
    return RewardModel.objects.filter(encoder=encoder, status=ModelStatus.ACTIVE).first()


def step_retrain(run: LoopRun) -> str | Wait:
    from training.services import TrainingBusy, reward_model_train
    from training.train import TrainConfig

    if run.campaign is None:
        raise LoopError("the run's campaign was deleted.")
    encoder = _encoder(run)
    training_run = TrainingRun.objects.filter(pk=run.params.get("training_run_id")).first()
    if training_run is not None and training_run.status == RunStatus.SUCCEEDED and training_run.model_id:
        candidate = training_run.model  # trained before a crash, step not yet recorded
    else:
        config = TrainConfig(**(run.params.get("train_config") or {}))
        if training_run is None or training_run.is_finished:
            training_run = TrainingRun.objects.create(
                campaign=run.campaign,
                encoder=encoder,
                created_by=run.created_by,
                params={"loop_run": run.pk},
            )
            _params_update(run, training_run_id=training_run.pk)
        try:
            candidate = reward_model_train(
                campaign=run.campaign, encoder=encoder, config=config, user=run.created_by, run=training_run
            )
        except TrainingBusy:
            # A training started elsewhere (the models page) holds the lock: wait for it, do not fail.
            return Wait("another reward model training is running")
    _params_update(run, candidate_id=candidate.pk, candidate_version=candidate.version)
    return f"candidate v{candidate.version} trained on {candidate.n_judgments} judgments ({candidate.n_pairs} pairs)"


def _accuracy(metrics: dict, *names: str) -> float | None:
    """Pull an accuracy out of a metrics report whose exact layout belongs to the training code."""
    for name in names:
        value = metrics.get(name)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, dict):
            for key in ("pairwise_accuracy", "accuracy"):
                if isinstance(value.get(key), int | float):
                    return float(value[key])
    return None


def metrics_headline(metrics: dict) -> dict:
    """The two numbers the console shows: the model's held-out pairwise accuracy and CLIPScore's."""
    metrics = metrics or {}
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else metrics
    return {
        "accuracy": _accuracy(test, "reward", "model", "pairwise_accuracy", "accuracy"),
        "clipscore_accuracy": _accuracy(test, "clipscore", "clipscore_accuracy", "clip"),
    }


def step_evaluate(run: LoopRun) -> str:
    """Training already evaluated the candidate (and the active model) on the same held-out pairs;
    this step checks the report exists and lifts its headline onto the loop run."""
    candidate = _candidate(run)
    metrics = candidate.metrics or {}
    if metrics.get("accuracy") is None:
        raise LoopError(f"candidate v{candidate.version} has no held-out accuracy; the gate cannot judge it.")
    report = {"candidate": {"version": candidate.version, **metrics_headline(metrics)}}
    compared = metrics.get("active")
    if isinstance(compared, dict) and compared.get("version") is not None:
        report["active"] = {"version": compared["version"], **metrics_headline(compared)}
    _summary_update(run, evaluation=report)
    head = report["candidate"]
    line = f"candidate v{candidate.version}: accuracy {_pct(head['accuracy'])} vs CLIPScore {_pct(head['clipscore_accuracy'])}"
    if "active" in report:
        line += f", active v{report['active']['version']} {_pct(report['active']['accuracy'])}"
    return line + " on the same held-out pairs"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def step_gate(run: LoopRun) -> str:
    from training.services import reward_model_gate, reward_model_promote

    candidate = _candidate(run)
    if candidate.status != ModelStatus.ACTIVE:  # else: promoted before a crash, step not yet recorded
        if reward_model_gate(candidate=candidate, user=run.created_by):
            reward_model_promote(
                model=candidate, user=run.created_by, note=f"gate passed in loop run {run.pk}"
            )
        candidate.refresh_from_db()
    promoted = candidate.status == ModelStatus.ACTIVE
    note = ((candidate.metrics or {}).get("gate") or {}).get("note", "")
    _params_update(run, promoted=promoted)
    active = _active_model(candidate.encoder)
    _summary_update(run, promoted=promoted, gate_note=note, active_version=active.version if active else None)
    if promoted:
        return f"v{candidate.version} promoted ({note})" if note else f"v{candidate.version} promoted"
    return f"v{candidate.version} refused by the gate ({note}); the active model stays"


def step_rescore(run: LoopRun) -> str | Wait:
    from scoring.models import ScoringRun

    if not run.params.get("promoted"):
        return "skipped: no new model to score with"
    candidate = _candidate(run)
    scoring_run = ScoringRun.objects.filter(pk=run.params.get("scoring_run_id")).first()
    if scoring_run is None or scoring_run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
        from scoring.services import scoring_run_start

        if scoring_run is not None:
            logger.info(
                "loop run %s: scoring run %s %s; starting another", run.pk, scoring_run.pk, scoring_run.status
            )
        scoring_run = scoring_run_start(
            encoder=candidate.encoder,
            reward_model_version=candidate.version,
            user=run.created_by,
            enqueue=not _INLINE.get(),
        )
        _params_update(run, scoring_run_id=scoring_run.pk)
        if _INLINE.get():
            from scoring.services import scoring_run_sync

            scoring_run_sync(run=scoring_run)
        scoring_run.refresh_from_db()
    if scoring_run.status == RunStatus.SUCCEEDED:
        _summary_update(run, rescored=scoring_run.done)
        return f"pool rescored with v{candidate.version} (scoring run {scoring_run.pk}, {scoring_run.done} pairs)"
    if scoring_run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
        raise LoopError(
            f"scoring run {scoring_run.pk} {scoring_run.status}: {scoring_run.error or 'no error text'}"
        )
    return Wait(f"scoring run {scoring_run.pk}: {scoring_run.done}/{scoring_run.total}")


def step_priorities(run: LoopRun) -> str:
    if run.campaign is None:
        raise LoopError("the run's campaign was deleted.")
    summary = task_priorities_refresh(campaign=run.campaign, encoder=_encoder(run), seed=run.pk)
    _summary_update(run, priorities=summary)
    if not summary["tasks"]:
        return "no open tasks to reprioritise"
    return (
        f"{summary['tasks']} open tasks reprioritised with {', '.join(summary['strategies'])} "
        f"({summary['changed']} changed)"
    )


def step_flags(run: LoopRun) -> str:
    if not run.params.get("promoted") and not run.params.get("force_flags"):
        return "skipped: no new model, flags unchanged"
    from annotate.flags import flags_refresh

    active = _active_model(_encoder(run))
    counts = flags_refresh(encoder=_encoder(run), reward_model_version=active.version if active else 0)
    _summary_update(run, flags=counts)
    opened = sum(c.get("open", 0) for c in counts.values())
    return f"flags refreshed: {opened} open"


def step_filter(run: LoopRun) -> str:
    rule_data = run.params.get("filter_rule")
    if not rule_data:
        return "skipped: no filter rule"
    from scoring.filtering import FilterRule, filter_run_create, filter_run_execute
    from scoring.models import FilterRun

    filter_run = FilterRun.objects.filter(pk=run.params.get("filter_run_id")).first()
    if filter_run is None or filter_run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
        active = _active_model(_encoder(run))
        # The admin chose the rule on the console form; a rule that keeps nothing or everything is
        # still run (its warning is in the filter run's params), not silently dropped.
        filter_run = filter_run_create(
            encoder=_encoder(run),
            reward_model_version=active.version if active else 0,
            rule=FilterRule.from_dict(rule_data),
            user=run.created_by,
            confirm=True,
        )
        _params_update(run, filter_run_id=filter_run.pk)
    # SQL only (counts and a streamed id list): quick enough to run inside the step.
    filter_run = filter_run_execute(run=filter_run)
    if filter_run.status != RunStatus.SUCCEEDED:
        raise LoopError(
            f"filter run {filter_run.pk} {filter_run.status}: {filter_run.error or 'no error text'}"
        )
    _summary_update(
        run, filter={"run": filter_run.pk, "kept": filter_run.kept, "considered": filter_run.considered}
    )
    return f"filter run {filter_run.pk} ({filter_run.params.get('rule_text', '')}): kept {filter_run.kept} of {filter_run.considered}"


STEP_FUNCTIONS: dict[str, Callable[[LoopRun], str | Wait]] = {
    "retrain": step_retrain,
    "evaluate": step_evaluate,
    "gate": step_gate,
    "rescore": step_rescore,
    "priorities": step_priorities,
    "flags": step_flags,
    "filter": step_filter,
}


# --- active-learning priorities ------------------------------------------------------------------


def _task_captions(task_ids: list[int]) -> dict[int, list[int]]:
    from annotate.models import TaskCaption

    out: dict[int, list[int]] = {tid: [] for tid in task_ids}
    rows = TaskCaption.objects.filter(task_id__in=task_ids).order_by("task_id", "position", "id")
    for task_id, caption_id in rows.values_list("task_id", "caption_id"):
        out[task_id].append(caption_id)
    return out


def _features(encoder: str, caption_ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Features from the embedding cache (computed and cached where missing)."""
    from scoring.services import caption_features

    if not caption_ids:
        return {}
    img, txt, ids = caption_features(encoder=encoder, caption_ids=caption_ids)
    img, txt = np.asarray(img, dtype=np.float32), np.asarray(txt, dtype=np.float32)
    return {int(cid): (img[i], txt[i]) for i, cid in enumerate(ids)}


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
    from scoring.active_model import active_model_get
    from scoring.encoders import encoder_load
    from scoring.reward_model import load_checkpoint

    encoder_name = encoder or settings.LOUPE_DEFAULT_ENCODER
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
        for tid in ids:
            present = [c for c in captions[tid] if c in feats]
            if not present:
                continue
            img = np.stack([feats[c][0] for c in present])
            txt = np.stack([feats[c][1] for c in present])
            k = embed_dim
            image_rows[tid] = img[0, :k]
            if model is not None and tid in old:
                with torch.no_grad():
                    out = model(torch.from_numpy(img), torch.from_numpy(txt))
                member_rows[tid] = out.rewards.numpy()
                ie, te = img[:, :k], txt[:, :k]
                cos = (ie * te).sum(1) / np.maximum(
                    np.linalg.norm(ie, axis=1) * np.linalg.norm(te, axis=1), 1e-8
                )
                clip_rows[tid] = 2.5 * np.maximum(cos, 0.0)

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
    # k-center runs over open and labelled tasks together; only the open tasks' scores are used.
    scores = strategy_scores(
        member_rewards=None,
        clipscores=None,
        embeddings=embeddings,
        batch_size=batch,
        seed=seed,
        labelled=labelled_idx,
    )
    scores = {k: v[: len(scored)] for k, v in scores.items()}
    if member is not None:
        model_scores = strategy_scores(
            member_rewards=member, clipscores=clip, embeddings=None, batch_size=batch, seed=seed
        )
        model_scores.pop("random", None)  # already drawn above, over the same tasks
        scores.update(model_scores)
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
