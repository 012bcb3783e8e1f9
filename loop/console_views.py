"""The admin console: a dashboard of the whole loop, every job with live progress, cancel and retry,
and the "retrain and filter now" form. Admin role only (accounts.roles)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.roles import ADMIN, role_required
from annotate.models import Campaign, Judgment, Task
from curate.models import Export, FilterRun, Flag
from loop.lock import loop_unfinished
from loop.models import LoopRun
from loop.runs import STEPS, LoopBusy, LoopError, loop_next_step
from loop.schedule import loop_should_run, retrain_after
from loop.services import loop_cancel, loop_resume, loop_start
from loop.steps import metrics_headline
from pool.models import Caption, CaptionStatus, CleaningRun, Image, ImageStatus, ImportRun, RunStatus
from pool.run_views import run_progress_response
from pool.selectors import pool_counts_estimate
from scoring.models import ScoringRun, ShardPassRun
from training.models import ModelStatus, RewardModel, TrainingRun
from training.selectors import retrain_thresholds

# kind in URLs -> (model, label). Order = the jobs page's filter order.
RUN_KINDS: dict[str, tuple[type, str]] = {
    "loop": (LoopRun, "Loop"),
    "training": (TrainingRun, "Training"),
    "scoring": (ScoringRun, "Scoring"),
    "shard_pass": (ShardPassRun, "Shard pass"),
    "filter": (FilterRun, "Filter"),
    "export": (Export, "Export"),
    "import": (ImportRun, "Import"),
    "cleaning": (CleaningRun, "Cleaning"),
}
JOBS_PER_PAGE = 50
JUDGMENT_DAYS = 14
# Agreement on the dashboard is measured on the most recent tasks with overlap: cheap, and recent.
AGREEMENT_TASKS = 500


# --- reads ---------------------------------------------------------------------------------------


def _kind_of(run) -> str:
    for kind, (model, _) in RUN_KINDS.items():
        if isinstance(run, model):
            return kind
    raise LookupError(type(run).__name__)


def _run_get(kind: str, run_id: int):
    if kind not in RUN_KINDS:
        raise Http404(f"No job type {kind!r}.")
    return get_object_or_404(RUN_KINDS[kind][0], pk=run_id)


@dataclass
class JobRow:
    kind: str
    label: str
    run: object
    title: str
    can_cancel: bool
    can_retry: bool

    @property
    def poll_url(self) -> str:
        return reverse("console:job_progress", args=[self.kind, self.run.pk])

    @property
    def detail_url(self) -> str:
        return reverse("console:job_detail", args=[self.kind, self.run.pk])


def _job_row(run) -> JobRow:
    kind = _kind_of(run)
    return JobRow(
        kind=kind,
        label=RUN_KINDS[kind][1],
        run=run,
        title=str(run),
        can_cancel=not run.is_finished,
        can_retry=retry_supported(run),
    )


def jobs_list(*, kind: str = "", status: str = "", limit: int = JOBS_PER_PAGE) -> list[JobRow]:
    """Newest first across every run type; each table is read with its own LIMIT, then merged."""
    kinds = [kind] if kind in RUN_KINDS else list(RUN_KINDS)
    runs = []
    for name in kinds:
        qs = RUN_KINDS[name][0].objects.select_related("created_by").order_by("-created_at", "-pk")
        if status:
            qs = qs.filter(status=status)
        runs.extend(qs[:limit])
    runs.sort(key=lambda r: (r.created_at, r.pk), reverse=True)
    return [_job_row(r) for r in runs[:limit]]


def judgments_per_day(days: int = JUDGMENT_DAYS) -> tuple[list[str], list[int]]:
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    since = today - timedelta(days=days - 1)
    per_day = dict(
        Judgment.objects.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values_list("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    labels, values = [], []
    for offset in range(days):
        day = (since + timedelta(days=offset)).date()
        labels.append(day.strftime("%m-%d"))
        values.append(per_day.get(day, 0))
    return labels, values


def recent_agreement(limit: int = AGREEMENT_TASKS) -> dict:
    """Mean pairwise Kendall tau between annotators on the latest tasks judged by two or more."""
    from annotate import agreement

    task_ids = list(
        Task.objects.filter(judgment_count__gte=2).order_by("-id").values_list("id", flat=True)[:limit]
    )
    rankings: dict[int, list] = {}
    for task_id, ranking in Judgment.objects.filter(task_id__in=task_ids).values_list("task_id", "ranking"):
        rankings.setdefault(task_id, []).append(ranking)
    taus = [agreement.mean_pairwise_tau(r) for r in rankings.values() if len(r) >= 2]
    taus = [t for t in taus if t is not None and not math.isnan(t)]
    return {"tasks": len(taus), "mean_tau": sum(taus) / len(taus) if taus else None}


def dashboard_context() -> dict:
    usable = Caption.objects.filter(status=CaptionStatus.OK, image__status=ImageStatus.OK)
    latest_filter = (
        FilterRun.objects.filter(status=RunStatus.SUCCEEDED).order_by("-finished_at", "-pk").first()
    )
    labels, values = judgments_per_day()
    models = []
    for model in RewardModel.objects.filter(status=ModelStatus.ACTIVE).order_by("encoder"):
        models.append({"model": model, **metrics_headline(model.metrics)})
    campaigns = []
    for campaign in Campaign.objects.filter(is_active=True).order_by("name"):
        should, reason = loop_should_run(campaign=campaign)
        campaigns.append(
            {"campaign": campaign, "should": should, "reason": reason, "threshold": retrain_after(campaign)}
        )
    # A big pool shows PostgreSQL's estimates ("about"): four COUNTs over 10M rows take seconds.
    estimate = pool_counts_estimate()
    if estimate is not None:
        counts = {
            "images": estimate["images_total"],
            "images_ok": estimate["images"].get(ImageStatus.OK, 0),
            "captions": estimate["captions_total"],
            "clean": estimate["usable"],
            "counts_estimated": True,
        }
    else:
        counts = {
            "images": Image.objects.count(),
            "images_ok": Image.objects.filter(status=ImageStatus.OK).count(),
            "captions": Caption.objects.count(),
            "clean": usable.count(),
            "counts_estimated": False,
        }
    return {
        **counts,
        "flagged": Flag.objects.filter(is_open=True).values("caption_id").distinct().count(),
        "latest_filter": latest_filter,
        "judgments_total": Judgment.objects.count(),
        "day_labels": labels,
        "day_values": values,
        "agreement": recent_agreement(),
        "active_models": models,
        "campaigns": campaigns,
        "running_loop": loop_unfinished(),
        "recent_loops": [_job_row(r) for r in LoopRun.objects.order_by("-created_at", "-pk")[:5]],
        "schedule": _schedule(),
        "thresholds": retrain_thresholds(),
    }


def _schedule():
    from django_celery_beat.models import PeriodicTask

    return PeriodicTask.objects.filter(task="loop.tasks.loop_tick_task").select_related("interval").first()


# --- cancel and retry per run type ----------------------------------------------------------------


def _retry_loop(run: LoopRun, user) -> str:
    run = loop_resume(run=run, user=user)
    if run.status == RunStatus.SUCCEEDED:
        return f"Loop run {run.pk} had finished every step; marked succeeded."
    return f"Loop run {run.pk} resumed at step '{loop_next_step(run)}'."


def _retry_training(run: TrainingRun, user) -> str:
    loop_id = (run.params or {}).get("loop_run")
    if loop_id:
        loop_run = LoopRun.objects.get(pk=loop_id)
        loop_resume(run=loop_run, user=user)
        return f"Training run {run.pk} belongs to loop run {loop_run.pk}; the loop was resumed."
    from training.tasks import training_run_execute

    _requeue(run)
    transaction.on_commit(lambda: training_run_execute.delay(run.pk))
    return f"Training run {run.pk} queued again."


def _retry_scoring(run: ScoringRun, user) -> str:
    from scoring.services import scoring_run_resume

    pending = scoring_run_resume(run=run)
    return f"Scoring run {run.pk} resumed: {len(pending)} chunks queued again."


def _retry_shard_pass(run: ShardPassRun, user) -> str:
    from scoring.shard_pass import shard_pass_resume

    pending = shard_pass_resume(run=run)
    return f"Shard pass {run.pk} resumed: {len(pending)} shards queued again."


def _retry_filter(run: FilterRun, user) -> str:
    from curate.tasks import filter_run_execute

    _requeue(run)
    transaction.on_commit(lambda: filter_run_execute.delay(run.pk))
    return f"Filter run {run.pk} queued again."


def _retry_export(run: Export, user) -> str:
    from curate.tasks import export_execute

    _requeue(run)
    transaction.on_commit(lambda: export_execute.delay(run.pk))
    return f"Export {run.pk} queued again."


def _retry_import(run: ImportRun, user) -> str:
    from pool.tasks import import_run_execute

    _requeue(run)
    transaction.on_commit(lambda: import_run_execute.delay(run.pk))
    return f"Import {run.pk} queued again (imports skip what they already stored)."


def _retry_cleaning(run: CleaningRun, user) -> str:
    from pool.tasks import cleaning_run_execute

    _requeue(run)
    transaction.on_commit(lambda: cleaning_run_execute.delay(run.pk))
    return f"Cleaning run {run.pk} queued again."


def _requeue(run) -> None:
    type(run).objects.filter(pk=run.pk).update(status=RunStatus.QUEUED, error="", finished_at=None)


# Which finished states each run type can be retried from, and how. Scoring resumes only failed runs
# (its chunks skip work of a cancelled run); the others re-run their idempotent task.
RETRY = {
    "loop": ((RunStatus.FAILED, RunStatus.CANCELLED), _retry_loop),
    "training": ((RunStatus.FAILED, RunStatus.CANCELLED), _retry_training),
    "scoring": ((RunStatus.FAILED,), _retry_scoring),
    "shard_pass": ((RunStatus.FAILED,), _retry_shard_pass),
    "filter": ((RunStatus.FAILED, RunStatus.CANCELLED), _retry_filter),
    "export": ((RunStatus.FAILED, RunStatus.CANCELLED), _retry_export),
    "import": ((RunStatus.FAILED, RunStatus.CANCELLED), _retry_import),
    "cleaning": ((RunStatus.FAILED, RunStatus.CANCELLED), _retry_cleaning),
}


def retry_supported(run) -> bool:
    states, _ = RETRY.get(_kind_of(run), ((), None))
    return run.status in states


def job_cancel(*, run, user) -> bool:
    """Mark an unfinished run cancelled; its task checks the status and stops. False if finished."""
    if run.is_finished:
        return False
    if isinstance(run, LoopRun):
        loop_cancel(run=run, user=user)
        return True
    if isinstance(run, ScoringRun):
        from scoring.services import scoring_run_cancel

        return scoring_run_cancel(run=run)
    if isinstance(run, ShardPassRun):
        from scoring.shard_pass import shard_pass_cancel

        return shard_pass_cancel(run=run)
    return bool(
        type(run)
        .objects.filter(pk=run.pk, status__in=(RunStatus.QUEUED, RunStatus.RUNNING))
        .update(status=RunStatus.CANCELLED, finished_at=timezone.now())
    )


def job_retry(*, run, user) -> str:
    kind = _kind_of(run)
    states, handler = RETRY[kind]
    if run.status not in states:
        raise LoopError(f"{run} is {run.status}; it can be retried only when {' or '.join(states)}.")
    with transaction.atomic():
        return handler(run, user)


# --- forms ---------------------------------------------------------------------------------------


class LoopStartForm(forms.Form):
    campaign = forms.ModelChoiceField(queryset=Campaign.objects.filter(is_active=True).order_by("name"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # With one campaign there is nothing to choose: it is selected.
        campaigns = list(self.fields["campaign"].queryset[:2])
        if len(campaigns) == 1:
            self.fields["campaign"].initial = campaigns[0].pk
            self.fields["campaign"].empty_label = None

    encoder = forms.CharField(
        max_length=255,
        required=False,
        help_text="Encoder name; empty = the default (LOUPE_DEFAULT_ENCODER).",
    )
    filter_preset = forms.ChoiceField(
        required=False,
        choices=[
            ("", "no filter run"),
            ("top_percent", "top k% by reward"),
            ("datacomp-0.28", "DataComp cosine ≥ 0.28"),
        ],
        label="Filter rule",
    )
    top_percent = forms.FloatField(
        required=False,
        min_value=0.1,
        max_value=100,
        initial=30,
        label="k (top k%)",
        help_text="Compress & Align kept 30%.",
    )

    def clean_encoder(self) -> str:
        from scoring.encoder_names import EncoderError, encoder_name_check

        name = self.cleaned_data["encoder"].strip() or settings.LOUPE_DEFAULT_ENCODER
        try:
            encoder_name_check(name)
        except EncoderError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return name

    def filter_rule(self) -> dict | None:
        preset = self.cleaned_data.get("filter_preset")
        if preset == "top_percent":
            return {"top_percent": self.cleaned_data.get("top_percent") or 30.0}
        if preset:
            return {"preset": preset}
        return None


# --- views ---------------------------------------------------------------------------------------


@require_GET
@role_required(ADMIN)
def dashboard(request):
    context = dashboard_context()
    context["form"] = LoopStartForm(initial={"encoder": settings.LOUPE_DEFAULT_ENCODER})
    return render(request, "console/dashboard.html", context)


@require_POST
@role_required(ADMIN)
def loop_start_view(request):
    form = LoopStartForm(request.POST)
    if not form.is_valid():
        context = dashboard_context()
        context["form"] = form
        return render(request, "console/dashboard.html", context, status=400)
    try:
        run = loop_start(
            campaign=form.cleaned_data["campaign"],
            trigger="manual",
            user=request.user,
            encoder=form.cleaned_data["encoder"],
            filter_rule=form.filter_rule(),
        )
    except LoopBusy as exc:
        messages.error(request, str(exc))
        return redirect("console:dashboard")
    messages.success(request, f"Loop run {run.pk} queued: retrain, gate, rescore, priorities, flags, filter.")
    return redirect("console:job_detail", kind="loop", run_id=run.pk)


@require_GET
@role_required(ADMIN)
def jobs(request):
    kind = request.GET.get("kind", "")
    status = request.GET.get("status", "")
    rows = jobs_list(kind=kind, status=status if status in RunStatus.values else "")
    context = {
        "rows": rows,
        "any_unfinished": any(not row.run.is_finished for row in rows),
        "kinds": [(k, label) for k, (_, label) in RUN_KINDS.items()],
        "statuses": RunStatus.choices,
        "kind": kind,
        "status": status,
    }
    template = "console/jobs.html#jobs-table" if request.htmx else "console/jobs.html"
    return render(request, template, context)


@require_GET
@role_required(ADMIN)
def job_detail(request, kind: str, run_id: int):
    run = _run_get(kind, run_id)
    row = _job_row(run)
    context = {"row": row, "run": run, "steps": _step_states(run) if kind == "loop" else ()}
    if kind == "loop":
        context["children"] = [_job_row(child) for child in _loop_children(run)]
        context["next_step"] = loop_next_step(run)
    if kind == "training" and (run.params or {}).get("loop_run"):
        context["parent"] = LoopRun.objects.filter(pk=run.params["loop_run"]).first()
    # The page's live part polls this view (htmx) until the job has finished.
    template = "console/job_detail.html#live" if request.htmx else "console/job_detail.html"
    return render(request, template, context)


def _step_states(run: LoopRun) -> list[tuple[str, str]]:
    """Per step: done, running (a worker is on it), next (queued: no worker yet), failed, cancelled or
    pending. Only a running run highlights a step as running."""
    finished = STEPS.index(run.step) + 1 if run.step else 0
    at_stop = {
        RunStatus.RUNNING: "running",
        RunStatus.QUEUED: "next",
        RunStatus.FAILED: "failed",
        RunStatus.CANCELLED: "cancelled",
    }.get(run.status, "pending")
    states = []
    for index, step in enumerate(STEPS):
        if index < finished:
            states.append((step, "done"))
        elif index == finished:
            states.append((step, at_stop))
        else:
            states.append((step, "pending"))
    return states


def _loop_children(run: LoopRun) -> list:
    found = []
    for key, model in (
        ("training_run_id", TrainingRun),
        ("scoring_run_id", ScoringRun),
        ("filter_run_id", FilterRun),
    ):
        child = (
            model.objects.filter(pk=(run.params or {}).get(key)).first()
            if (run.params or {}).get(key)
            else None
        )
        if child is not None:
            found.append(child)
    return found


@require_GET
@role_required(ADMIN)
def job_progress(request, kind: str, run_id: int):
    return run_progress_response(request, _run_get(kind, run_id))


@require_POST
@role_required(ADMIN)
def job_cancel_view(request, kind: str, run_id: int):
    run = _run_get(kind, run_id)
    if job_cancel(run=run, user=request.user):
        messages.success(request, f"{run} cancelled; its worker stops at the next check.")
    else:
        messages.warning(request, f"{run} had already finished ({run.status}); nothing to cancel.")
    return redirect("console:job_detail", kind=kind, run_id=run.pk)


@require_POST
@role_required(ADMIN)
def job_retry_view(request, kind: str, run_id: int):
    run = _run_get(kind, run_id)
    try:
        messages.success(request, job_retry(run=run, user=request.user))
    except (LoopBusy, LoopError) as exc:
        messages.error(request, str(exc))
    return redirect("console:job_detail", kind=kind, run_id=run.pk)
