"""Start a filter run's downstream check from the filters page (admins: it trains models on a worker)."""

from __future__ import annotations

from django.contrib import messages
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from accounts.roles import ADMIN, role_required
from curate.downstream import DownstreamError, filter_run_downstream_queue
from curate.models import FilterRun
from curate.tasks import filter_run_downstream_task

MAX_SEEDS = 10


@require_POST
@role_required(ADMIN)
def downstream_start(request, run_id: int):
    run = get_object_or_404(FilterRun, pk=run_id)
    seeds = request.POST.get("seeds", "3")
    seeds = min(MAX_SEEDS, max(1, int(seeds))) if seeds.isdigit() else 3
    try:
        with transaction.atomic():
            queued = filter_run_downstream_queue(run=run, seeds=seeds)
            if queued:
                filter_run_downstream_task.delay_on_commit(run.pk, seeds)
    except DownstreamError as exc:
        messages.error(request, str(exc))
        return redirect("filters:index")
    if queued:
        messages.success(request, f"Downstream check of filter run {run.pk} queued ({seeds} seeds).")
    else:
        messages.info(request, f"A downstream check of filter run {run.pk} is already queued or running.")
    return redirect("filters:index")
