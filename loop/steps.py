"""The chain's steps. Each takes the ``LoopRun``, does its work (or hands it to a worker and returns
``Wait``), and returns a line for the run's log."""

from __future__ import annotations

import logging
from collections.abc import Callable

from loop.models import LoopRun
from loop.runs import INLINE, LoopError, Wait, params_update, summary_update
from pool.models import RunStatus
from scoring.active_model import loop_encoder_get
from training.models import ModelStatus, RewardModel, TrainingRun
from training.priorities import task_priorities_refresh

logger = logging.getLogger(__name__)


def _encoder(run: LoopRun) -> str:
    return run.params.get("encoder") or loop_encoder_get()


def _candidate(run: LoopRun) -> RewardModel:
    candidate = RewardModel.objects.filter(pk=run.params.get("candidate_id")).first()
    if candidate is None:
        raise LoopError("the retrain step left no candidate model; resume the run to train again.")
    return candidate


def _active_model(encoder: str) -> RewardModel | None:
    return RewardModel.objects.filter(encoder=encoder, status=ModelStatus.ACTIVE).first()


def step_retrain(run: LoopRun) -> str | Wait:
    from training.candidates import TrainingBusy, TrainingCancelled, reward_model_train
    from training.config import TrainConfig

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
            params_update(run, training_run_id=training_run.pk)
        try:
            candidate = reward_model_train(
                campaign=run.campaign, encoder=encoder, config=config, user=run.created_by, run=training_run
            )
        except TrainingBusy:
            # A training started elsewhere (the models page) holds the lock: wait for it, do not fail.
            return Wait("another reward model training is running")
        except TrainingCancelled as exc:
            # The loop run was cancelled (its training run with it): the chain stops here, not as a failure.
            return f"training stopped: {exc}"
    params_update(run, candidate_id=candidate.pk, candidate_version=candidate.version)
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
    summary_update(run, evaluation=report)
    head = report["candidate"]
    line = f"candidate v{candidate.version}: accuracy {_pct(head['accuracy'])} vs CLIPScore {_pct(head['clipscore_accuracy'])}"
    if "active" in report:
        line += f", active v{report['active']['version']} {_pct(report['active']['accuracy'])}"
    return line + " on the same held-out pairs"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def step_gate(run: LoopRun) -> str:
    from training.candidates import reward_model_gate
    from training.services import reward_model_promote

    candidate = _candidate(run)
    if candidate.status != ModelStatus.ACTIVE:  # else: promoted before a crash, step not yet recorded
        if reward_model_gate(candidate=candidate, user=run.created_by):
            reward_model_promote(
                model=candidate, user=run.created_by, note=f"gate passed in loop run {run.pk}"
            )
        candidate.refresh_from_db()
    promoted = candidate.status == ModelStatus.ACTIVE
    note = ((candidate.metrics or {}).get("gate") or {}).get("note", "")
    params_update(run, promoted=promoted)
    active = _active_model(candidate.encoder)
    summary_update(run, promoted=promoted, gate_note=note, active_version=active.version if active else None)
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
        from scoring.services import pool_rescore_start

        if scoring_run is not None:
            logger.info(
                "loop run %s: scoring run %s %s; starting another", run.pk, scoring_run.pk, scoring_run.status
            )
        # Bulk (heads over the shard pass's features) when the pool has them, else a scoring run.
        scoring_run = pool_rescore_start(
            encoder=candidate.encoder,
            reward_model_version=candidate.version,
            user=run.created_by,
            enqueue=not INLINE.get(),
        )
        params_update(run, scoring_run_id=scoring_run.pk)
        if INLINE.get():
            from scoring.inference import scoring_run_sync

            scoring_run_sync(run=scoring_run)
        scoring_run.refresh_from_db()
    if scoring_run.status == RunStatus.SUCCEEDED:
        summary_update(run, rescored=scoring_run.done)
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
    summary_update(run, priorities=summary)
    if not summary["tasks"]:
        return "no open tasks to reprioritise"
    return (
        f"{summary['tasks']} open tasks reprioritised with {', '.join(summary['strategies'])} "
        f"({summary['changed']} changed)"
    )


def step_flags(run: LoopRun) -> str:
    if not run.params.get("promoted") and not run.params.get("force_flags"):
        return "skipped: no new model, flags unchanged"
    from curate.flags import flags_refresh

    active = _active_model(_encoder(run))
    counts = flags_refresh(encoder=_encoder(run), reward_model_version=active.version if active else 0)
    summary_update(run, flags=counts)
    opened = sum(c.get("open", 0) for c in counts.values())
    return f"flags refreshed: {opened} open"


def step_filter(run: LoopRun) -> str:
    rule_data = run.params.get("filter_rule")
    if not rule_data:
        return "skipped: no filter rule"
    from curate.filtering import FilterRule, filter_run_create, filter_run_execute
    from curate.models import FilterRun

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
            # Before the gate has passed a model, the chain's "top k%" ranks by CLIPScore (its rule text
            # says so) rather than failing the chain: the next promotion's chain filters by reward.
            clipscore_ranking=True,
        )
        params_update(run, filter_run_id=filter_run.pk)
    # SQL only (counts and a streamed id list): quick enough to run inside the step.
    filter_run = filter_run_execute(run=filter_run)
    if filter_run.status != RunStatus.SUCCEEDED:
        raise LoopError(
            f"filter run {filter_run.pk} {filter_run.status}: {filter_run.error or 'no error text'}"
        )
    summary_update(
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
