"""Views of the pool app: thin, they call services (importing, cleaning_runs) and selectors. Curators browse; admins start runs."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.roles import ADMIN, CURATOR, has_role, role_required
from pool import cleaning_runs, importing, selectors
from pool.forms import CleaningForm, ImportForm
from pool.models import CaptionStatus, CleaningRun, Image, ImageStatus, ImportRun
from pool.run_views import run_progress_response


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


@require_GET
@role_required(CURATOR)
def pool_browse(request):
    status = request.GET.get("status", "")
    if status not in ImageStatus.values:
        status = ""
    source = request.GET.get("source", "")
    q = request.GET.get("q", "").strip()[:200]
    page = selectors.images_page(
        status=status,
        source=source,
        q=q,
        after=_int_or_none(request.GET.get("after")),
        before=_int_or_none(request.GET.get("before")),
    )
    stats = selectors.pool_stats()
    context = {
        "page": page,
        "stats": stats,
        "chart_labels": [label for label, _, _ in stats["images"]],
        "chart_values": [count for _, count, _ in stats["images"]],
        "statuses": ImageStatus.choices,
        "sources": selectors.image_sources(),
        "filters": {"status": status, "source": source, "q": q},
        "view": request.GET.get("view", "grid") if request.GET.get("view") in ("grid", "table") else "grid",
    }
    template = "pool/browse.html#results" if request.htmx else "pool/browse.html"
    return render(request, template, context)


@require_GET
@role_required(CURATOR)
def image_detail(request, image_id: int):
    try:
        image = selectors.image_detail(image_id=image_id)
    except Image.DoesNotExist:
        raise Http404("No such image") from None
    return render(
        request,
        "pool/image_detail.html",
        {
            "image": image,
            "duplicates": selectors.image_duplicates(image=image),
            "caption_statuses": CaptionStatus,
        },
    )


def _runs_page(request, *, template: str, runs, form_class, form=None, status: int = 200):
    """A list of runs with, for admins, the form that starts one (bound and with errors after a bad POST)."""
    if form is None and has_role(request.user, ADMIN):
        form = form_class()
    return render(request, template, {"runs": runs, "form": form}, status=status)


def _run_detail(request, *, model, run_id: int, template: str, progress_url: str):
    run = get_object_or_404(model, pk=run_id)
    return render(request, template, {"run": run, "poll_url": reverse(progress_url, args=[run.pk])})


def _run_start(request, *, form_class, template: str, runs, start, detail_url: str):
    """Start a run from a POSTed form; a bad form comes back with its errors (400)."""
    form = form_class(request.POST)
    if not form.is_valid():
        return _runs_page(request, template=template, runs=runs, form_class=form_class, form=form, status=400)
    run, message = start(form.cleaned_data)
    messages.success(request, message)
    return redirect(detail_url, run_id=run.pk)


@require_GET
@role_required(CURATOR)
def import_list(request):
    return _runs_page(
        request, template="pool/imports.html", runs=selectors.import_runs(), form_class=ImportForm
    )


@require_POST
@role_required(ADMIN)
def import_start(request):
    def start(data):
        run = importing.import_run_start(
            source=data["source"],
            user=request.user,
            format=data["format"] or None,
            image_column=data["image_column"] or None,
            caption_columns=data["caption_columns"] or None,
            caption_source=data["caption_source"],
        )
        return run, f"Import {run.pk} of {run.source} queued."

    return _run_start(
        request,
        form_class=ImportForm,
        template="pool/imports.html",
        runs=selectors.import_runs(),
        start=start,
        detail_url="pool:import_detail",
    )


@require_GET
@role_required(CURATOR)
def import_detail(request, run_id: int):
    return _run_detail(
        request,
        model=ImportRun,
        run_id=run_id,
        template="pool/import_detail.html",
        progress_url="pool:import_progress",
    )


@require_GET
@role_required(CURATOR)
def import_progress(request, run_id: int):
    return run_progress_response(request, get_object_or_404(ImportRun, pk=run_id))


@require_GET
@role_required(CURATOR)
def cleaning_list(request):
    return _runs_page(
        request, template="pool/cleaning.html", runs=selectors.cleaning_runs(), form_class=CleaningForm
    )


@require_POST
@role_required(ADMIN)
def cleaning_start(request):
    def start(data):
        run = cleaning_runs.cleaning_run_start(
            user=request.user, min_side=data["min_side"], hamming_radius=data["radius"]
        )
        return run, f"Cleaning run {run.pk} queued."

    return _run_start(
        request,
        form_class=CleaningForm,
        template="pool/cleaning.html",
        runs=selectors.cleaning_runs(),
        start=start,
        detail_url="pool:cleaning_detail",
    )


@require_GET
@role_required(CURATOR)
def cleaning_detail(request, run_id: int):
    return _run_detail(
        request,
        model=CleaningRun,
        run_id=run_id,
        template="pool/cleaning_detail.html",
        progress_url="pool:cleaning_progress",
    )


@require_GET
@role_required(CURATOR)
def cleaning_progress(request, run_id: int):
    return run_progress_response(request, get_object_or_404(CleaningRun, pk=run_id))
