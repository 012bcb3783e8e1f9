"""Views of the scoring app: thin, they call services and selectors. Curators look; admins act."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.roles import ADMIN, CURATOR, has_role, role_required
from pool.run_views import run_progress_response
from scoring import selectors, services
from scoring.forms import ScoringRunForm
from scoring.models import ScoringRun


def _overview(request) -> dict:
    models = selectors.score_models()
    chosen = request.GET.get("model", "")
    key = next((m for m in models if f"{m[0]}|{m[1]}" == chosen), models[0] if models else None)
    if key is None:
        return {"models": [], "model": None}
    encoder, version = key
    return {
        "models": [(f"{e}|{v}", e, v) for e, v in models],
        "model": {"key": f"{encoder}|{version}", "encoder": encoder, "version": version},
        "clip_hist": selectors.score_histogram(
            encoder=encoder, reward_model_version=version, field="clipscore"
        ),
        "reward_hist": (
            selectors.score_histogram(encoder=encoder, reward_model_version=version, field="reward")
            if version
            else None
        ),
        "summary": selectors.score_summary(encoder=encoder, reward_model_version=version),
    }


def _home_context(request, form=None) -> dict:
    is_admin = has_role(request.user, ADMIN)
    return {
        "runs": selectors.scoring_runs(),
        "form": (form or ScoringRunForm()) if is_admin else None,
        "is_admin": is_admin,
        **_overview(request),
    }


@require_GET
@role_required(CURATOR)
def scoring_home(request):
    return render(request, "scoring/home.html", _home_context(request))


@require_POST
@role_required(ADMIN)
def scoring_run_create(request):
    form = ScoringRunForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            run = services.scoring_run_start(
                encoder=data["encoder"],
                reward_model_version=data["reward_model_version"],
                chunk_size=data["chunk_size"],
                user=request.user,
            )
        except ValueError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Scoring run {run.pk} queued ({run.encoder}).")
            return redirect("scoring:run_detail", run_id=run.pk)
    return render(request, "scoring/home.html", _home_context(request, form), status=400)


@require_GET
@role_required(CURATOR)
def scoring_run_detail(request, run_id: int):
    run = get_object_or_404(ScoringRun, pk=run_id)
    return render(
        request,
        "scoring/run_detail.html",
        {
            "run": run,
            "poll_url": reverse("scoring:run_progress", args=[run.pk]),
            "failures": selectors.scoring_run_failures(run=run),
            "pending_chunks": run.chunks.filter(done=False).count(),
            "load": selectors.bulk_load_state(run=run),
            "is_admin": has_role(request.user, ADMIN),
        },
    )


@require_GET
@role_required(CURATOR)
def scoring_run_progress(request, run_id: int):
    return run_progress_response(request, get_object_or_404(ScoringRun, pk=run_id))


@require_POST
@role_required(ADMIN)
def scoring_run_cancel(request, run_id: int):
    run = get_object_or_404(ScoringRun, pk=run_id)
    if services.scoring_run_cancel(run=run):
        messages.success(request, f"Scoring run {run.pk} cancelled; scores already committed stay.")
    else:
        messages.info(request, f"Scoring run {run.pk} had already finished.")
    return redirect("scoring:run_detail", run_id=run.pk)


@require_POST
@role_required(ADMIN)
def scoring_run_resume(request, run_id: int):
    run = get_object_or_404(ScoringRun, pk=run_id)
    pending = services.scoring_run_resume(run=run)
    if not pending and (run.params or {}).get("load_table"):
        messages.success(request, f"Scoring run {run.pk}: its finish (index build and attach) is queued.")
    else:
        messages.success(request, f"Scoring run {run.pk}: {len(pending)} unfinished chunks queued again.")
    return redirect("scoring:run_detail", run_id=run.pk)
