"""The judge page: judge runs over a band of the pool, rewrite runs (AITQE), and what the latest judge
thinks of the pool. Curators look; admins start runs. Thin: forms, services and selectors do the work."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.roles import ADMIN, CURATOR, has_role, role_required
from curate.filtering import score_histogram, vlm_judge_resolve
from curate.judge_forms import JudgeRunForm, RewriteRunForm
from curate.model_captions import rewrite_run_start
from curate.models import RewriteRun
from scoring.active_model import active_model_get
from scoring.models import ScoringRun
from scoring.vlm_runs import vlm_band_resolve, vlm_run_start


def _context(request, judge_form=None, rewrite_form=None) -> dict:
    initial = {"scorer": settings.LOUPE_VLM_JUDGE or ""}
    try:
        fingerprint, judge = vlm_judge_resolve("")
    except ValueError:
        fingerprint = judge = ""
    counts, edges = (
        score_histogram(encoder="", reward_model_version=0, score_field="itm", vlm_fingerprint=fingerprint)
        if fingerprint
        else ([], [])
    )
    is_admin = has_role(request.user, ADMIN)
    return {
        "judge": judge,
        "itm_counts": counts,
        "itm_edges": edges,
        "judge_runs": ScoringRun.objects.filter(encoder__startswith="vlm:").order_by("-created_at")[:20],
        "rewrite_runs": RewriteRun.objects.select_related("campaign").order_by("-created_at")[:20],
        "is_admin": is_admin,
        "judge_form": (judge_form or JudgeRunForm(initial=initial)) if is_admin else None,
        "rewrite_form": (rewrite_form or RewriteRunForm(initial=initial)) if is_admin else None,
    }


@require_GET
@role_required(CURATOR)
def index(request):
    return render(request, "judge/index.html", _context(request))


@require_POST
@role_required(ADMIN)
def judge_run_create(request):
    form = JudgeRunForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        active = active_model_get(encoder=data["encoder"])
        try:
            band = vlm_band_resolve(
                encoder=data["encoder"],
                reward_model_version=active.version if active else 0,
                field=data["field"],
                low_percent=data["low_percent"],
                high_percent=data["high_percent"],
            )
            run = vlm_run_start(scorer=data["scorer"], band=band, user=request.user)
        except ValueError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(
                request,
                f"Judge run {run.pk} queued over {data['field']} percentiles "
                f"{data['low_percent']:g}-{data['high_percent']:g}.",
            )
            return redirect("judge:index")
    return render(request, "judge/index.html", _context(request, judge_form=form), status=400)


@require_POST
@role_required(ADMIN)
def rewrite_run_create(request):
    form = RewriteRunForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            run = rewrite_run_start(
                scorer=data["scorer"],
                below={"itm": data["itm_below"]},
                limit=data["limit"],
                campaign=data["campaign"],
                user=request.user,
            )
        except ValueError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Rewrite run {run.pk} queued.")
            return redirect("judge:index")
    return render(request, "judge/index.html", _context(request, rewrite_form=form), status=400)
