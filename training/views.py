"""Views of the training app: thin, they call services and selectors. Admins only."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.roles import ADMIN, role_required
from pool.run_views import run_progress_response
from training import selectors
from training.config import TrainConfig
from training.forms import RollbackForm, TrainingStartForm
from training.models import TrainingRun
from training.services import (
    RegistryError,
    promotion_comparison,
    rescore_after_activation,
    reward_model_promote,
    reward_model_rollback,
    training_run_create,
)


def _list_context(form: TrainingStartForm | None = None) -> dict:
    models = list(selectors.reward_models_list())
    return {
        "models": models,
        "series": selectors.accuracy_series(models),
        "events": selectors.model_events_recent(limit=20),
        "runs": selectors.training_runs_recent(),
        "form": form or TrainingStartForm(initial={"epochs": TrainConfig.epochs, "seed": 0}),
        "thresholds": selectors.retrain_thresholds(),
    }


@require_GET
@role_required(ADMIN)
def model_list(request: HttpRequest) -> HttpResponse:
    template = "training/model_list.html#runs" if request.htmx else "training/model_list.html"
    return render(request, template, _list_context())


@require_GET
@role_required(ADMIN)
def model_detail(request: HttpRequest, version: int) -> HttpResponse:
    model = selectors.reward_model_get(version=version)
    if model is None:
        raise Http404(f"No reward model v{version}.")
    metrics = model.metrics or {}
    comparison = promotion_comparison(model=model)
    return render(
        request,
        "training/model_detail.html",
        {
            "model": model,
            "m": metrics,
            "spearman": sorted((metrics.get("spearman") or {}).items()),
            "history": metrics.get("history") or [],
            "loss_series": {
                "train BT loss": [(h["epoch"], h["train_bt_loss"]) for h in metrics.get("history") or []],
                "validation BT loss": [
                    (h["epoch"], h["val_bt_loss"]) for h in metrics.get("history") or [] if "val_bt_loss" in h
                ],
            },
            "events": selectors.model_events_recent(model=model),
            "active": selectors.reward_model_active(encoder=model.encoder),
            "comparison": comparison,
            "delta_points": abs(comparison["delta"]) * 100
            if comparison and comparison["delta"] is not None
            else None,
            "config": model.config or {},
        },
    )


def _worse_by(comparison: dict | None) -> float | None:
    """How many accuracy points worse than the active model, when it is known to be worse."""
    if comparison and comparison.get("delta") is not None and comparison["delta"] < 0:
        return -comparison["delta"]
    return None


def _activated(request, model, verb: str) -> None:
    try:
        run = rescore_after_activation(model=model, user=request.user)
    except ValueError as exc:
        messages.warning(request, f"{verb} v{model.version}, but the pool could not be rescored: {exc}")
        return
    messages.success(
        request,
        f"{verb} v{model.version}: it is now active for {model.encoder}. Scoring run {run.pk} rescores the "
        "pool with it; reviews, flags and filters use its rewards once that finishes.",
    )


@require_POST
@role_required(ADMIN)
def model_promote(request: HttpRequest, version: int) -> HttpResponse:
    model = selectors.reward_model_get(version=version)
    if model is None:
        raise Http404(f"No reward model v{version}.")
    note = request.POST.get("note", "")[:500]
    comparison = promotion_comparison(model=model)
    worse = _worse_by(comparison)
    if worse is not None and request.POST.get("confirm") != "yes":
        # A model that does worse than the active one on the same held-out pairs is promoted only
        # after the admin has read by how much.
        return render(
            request,
            "training/promote_confirm.html",
            {"model": model, "comparison": comparison, "worse_points": 100 * worse, "note": note},
            status=409,
        )
    if worse is not None:
        note = f"{note or 'by hand'} (confirmed: {100 * worse:.1f} points worse than v{comparison['active_version']})"
    try:
        reward_model_promote(model=model, user=request.user, note=note or "by hand")
    except RegistryError as exc:
        messages.error(request, str(exc))
    else:
        _activated(request, model, "Promoted")
    return redirect("training:model_detail", version=version)


@require_POST
@role_required(ADMIN)
def model_rollback(request: HttpRequest) -> HttpResponse:
    form = RollbackForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Roll back needs a version number.")
        return redirect("training:model_list")
    try:
        model = reward_model_rollback(
            user=request.user,
            to_version=form.cleaned_data.get("to_version"),
            encoder=form.cleaned_data.get("encoder") or None,
        )
    except RegistryError as exc:
        messages.error(request, str(exc))
        return redirect("training:model_list")
    _activated(request, model, "Rolled back to")
    return redirect("training:model_detail", version=model.version)


@require_POST
@role_required(ADMIN)
def training_start(request: HttpRequest) -> HttpResponse:
    form = TrainingStartForm(request.POST)
    if not form.is_valid():
        return render(request, "training/model_list.html", _list_context(form), status=400)
    data = form.cleaned_data
    config = TrainConfig(epochs=data["epochs"], seed=data["seed"])
    run = training_run_create(
        campaign=data["campaign"],
        encoder=data["encoder"],
        config=config,
        user=request.user,
        promote_if_better=data["promote_if_better"],
        finetune=form.finetune_params(),
    )
    what = (
        f"Fine-tuning run {run.pk} ({data['finetune']})" if data.get("finetune") else f"Training run {run.pk}"
    )
    messages.success(request, f"{what} queued on {data['campaign'].name} ({data['encoder']}).")
    return redirect("training:model_list")


@require_GET
@role_required(ADMIN)
def training_run_progress(request: HttpRequest, pk: int) -> HttpResponse:
    return run_progress_response(request, get_object_or_404(TrainingRun, pk=pk))
