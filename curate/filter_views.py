"""Filter runs and exports: the rule form with a live preview, the runs and exports lists, downloads.

Curators preview and run filters, open a run to see the pairs it kept and dropped, and export what a
run keeps (and download it). The preview is the same page fragment with or without htmx: without
JavaScript the form's "Preview" button reloads the page.
"""

from __future__ import annotations

from django.contrib import messages
from django.db import transaction
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.roles import ADMIN, CURATOR, has_role, role_required
from annotate.models import Campaign
from curate.exports import ExportError, export_create, export_file_path
from curate.filtering import (
    PRESETS,
    FilterNeedsConfirm,
    FilterNeedsRewardModel,
    FilterRule,
    filter_preview,
    filter_run_create,
    rule_reward_check,
)
from curate.models import Export, FilterRun
from curate.selectors import filter_run_pairs, score_context_default, score_encoders
from curate.tasks import export_execute, filter_run_execute
from pool.query_params import INT64_MAX, int_param

RUNS_SHOWN = 30


def _float(value):
    if value in (None, ""):
        return None
    return float(value)


def _criteria_keys(context) -> list[str]:
    if context.reward_model_version == 0:
        return []  # CLIPScore-only scores have no criteria: do not walk them all looking for one
    sample = context.scores().filter(criteria__isnull=False).values_list("criteria", flat=True).first()
    return sorted(sample) if isinstance(sample, dict) else []


def _form_state(params) -> dict:
    """Encoder, version and rule from the form (GET for the preview, POST for the run)."""
    version = params.get("version", "")
    context = score_context_default(
        encoder=params.get("encoder") or None,
        reward_model_version=int_param(version),
    )
    keys = _criteria_keys(context)
    error = ""
    data: dict = {"preset": params.get("preset", "")}
    if not params and context.reward_model_version == 0:
        # First visit before any reward model: open on DataComp's CLIPScore filter rather than on a
        # "top 30% by reward" the page would have to refuse.
        data["preset"] = "datacomp-0.28"
    try:
        if data["preset"]:
            # A preset is the whole score rule; criteria minimums and balancing still combine with it.
            data.update(PRESETS.get(data["preset"], {}))
        else:
            data["top_percent"] = _float(params["top_percent"]) if "top_percent" in params else 30.0
            data["reward_min"] = _float(params.get("reward_min"))
            data["cosine_min"] = _float(params.get("cosine_min"))
        data["criteria_min"] = {
            key: float(params[f"min_{key}"]) for key in keys if params.get(f"min_{key}", "") != ""
        }
        data["balance_clusters"] = int(params.get("balance_clusters") or 0)
        rule = FilterRule.from_dict(data)
    except ValueError as exc:
        error = f"The rule is not valid: {exc}"
        rule = FilterRule()
    else:
        try:
            rule_reward_check(
                rule=rule, encoder=context.encoder, reward_model_version=context.reward_model_version
            )
        except FilterNeedsRewardModel as exc:
            error = str(exc)
    return {
        "score_context": context,
        "criteria_keys": keys,
        "rule": rule,
        # What the form shows: the request's fields, or the rule the first visit opened on.
        "params": params or {"preset": data["preset"], "top_percent": ""},
        "rule_error": error,
    }


def _page(request, *, params, status: int = 200, extra: dict | None = None):
    state = _form_state(params)
    preview = None
    if not state["rule_error"]:
        preview = filter_preview(
            encoder=state["score_context"].encoder,
            reward_model_version=state["score_context"].reward_model_version,
            rule=state["rule"],
        )
    context = {
        **state,
        "preview": preview,
        "presets": PRESETS,
        "encoders": score_encoders(limit=20),
        "runs": FilterRun.objects.order_by("-created_at")[:RUNS_SHOWN],
        "exports": Export.objects.select_related("filter_run").order_by("-created_at")[:RUNS_SHOWN],
        "export_kinds": Export.Kind.choices,
        # Judgment exports name their campaign; with one campaign it is preselected.
        "campaigns": list(Campaign.objects.order_by("name").only("id", "name")),
        "can_export": True,
        # The downstream check trains a model per seed: an admin's decision, like other training.
        "can_check_downstream": has_role(request.user, ADMIN),
        **(extra or {}),
    }
    if request.htmx and request.method == "GET":
        return render(request, "filters/index.html#preview", context, status=status)
    return render(request, "filters/index.html", context, status=status)


@require_GET
@role_required(CURATOR)
def index(request):
    return _page(request, params=request.GET)


@require_GET
@role_required(CURATOR)
def preview(request):
    return _page(request, params=request.GET)


@require_POST
@role_required(CURATOR)
def run_create(request):
    state = _form_state(request.POST)
    if state["rule_error"]:
        messages.error(request, state["rule_error"])
        return _page(request, params=request.POST, status=400)
    try:
        with transaction.atomic():
            run = filter_run_create(
                encoder=state["score_context"].encoder,
                reward_model_version=state["score_context"].reward_model_version,
                rule=state["rule"],
                user=request.user,
                confirm=request.POST.get("confirm") == "yes",
            )
            filter_run_execute.delay_on_commit(run.pk)
    except FilterNeedsConfirm as exc:
        return _page(request, params=request.POST, status=400, extra={"needs_confirm": str(exc)})
    messages.success(request, f"Filter run {run.pk} queued: {run.params.get('rule_text', '')}.")
    return redirect("filters:index")


PAIRS_PER_PAGE = 50


@require_GET
@role_required(CURATOR)
def run_detail(request, run_id: int):
    """The pairs a run kept or dropped with their scores, a page at a time by caption id (keyset): the
    counts come from the run row, so no request counts or scans the pool."""
    run = get_object_or_404(FilterRun, pk=run_id)
    show = "dropped" if request.GET.get("show") == "dropped" else "kept"
    after = request.GET.get("after", "")
    page = None
    error = ""
    if run.status == "succeeded":
        try:
            page = filter_run_pairs(
                run=run, show=show, after=int(after) if after.isdigit() else 0, limit=PAIRS_PER_PAGE
            )
        except FileNotFoundError as exc:
            error = str(exc)
    return render(
        request,
        "filters/run_detail.html",
        {
            "run": run,
            "show": show,
            "page": page,
            "after": after,
            "error": error,
            "dropped": max(0, run.considered - run.kept),
        },
    )


@require_GET
@role_required(CURATOR)
def run_progress(request, run_id: int):
    run = get_object_or_404(FilterRun, pk=run_id)
    return render(request, "filters/index.html#run-progress", {"run": run})


@require_POST
@role_required(CURATOR)
def export_start(request, run_id: int):
    run = get_object_or_404(FilterRun, pk=run_id)
    campaign = request.POST.get("campaign", "")
    kind = request.POST.get("kind", "")
    if kind in (Export.Kind.PREFERENCES, Export.Kind.COCO_HF) and not campaign.isdigit():
        messages.error(request, "Pick the campaign whose judgments to export (the list beside the format).")
        return redirect("filters:index")
    try:
        with transaction.atomic():
            export = export_create(
                kind=kind,
                filter_run=run,
                overwrite=False,
                user=request.user,
                campaign_id=int_param(campaign, maximum=INT64_MAX),
            )
            export_execute.delay_on_commit(export.pk)
    except ExportError as exc:
        messages.error(request, str(exc))
        return redirect("filters:index")
    messages.success(request, f"Export {export.pk} ({export.get_kind_display()}) queued into {export.path}.")
    return redirect("filters:index")


@require_GET
@role_required(CURATOR)
def export_progress(request, export_id: int):
    export = get_object_or_404(Export, pk=export_id)
    return render(request, "filters/index.html#export-progress", {"export": export})


@require_GET
@role_required(CURATOR)
def export_download(request, export_id: int, name: str):
    export = get_object_or_404(Export, pk=export_id)
    try:
        path = export_file_path(export=export, name=name)
    except PermissionError as exc:
        raise Http404(str(exc)) from exc
    except FileNotFoundError as exc:
        raise Http404(str(exc)) from exc
    return FileResponse(open(path, "rb"), as_attachment=True, filename=path.name)  # noqa: SIM115
