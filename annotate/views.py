"""Views of the annotate app: thin, they call services and selectors.

Every screen works as plain forms; with htmx the task area is swapped in place (``request.htmx``) and the
progress counters refresh on the ``annotate-progress`` event sent in ``HX-Trigger``.
"""

from __future__ import annotations

import io
import tempfile
import uuid

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import SimpleLazyObject
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.roles import ADMIN, ANNOTATOR, role_required
from annotate import selectors, services
from annotate import tasks as annotate_tasks
from annotate.exports import judgments_coco_hf, preference_pairs_jsonl
from annotate.models import (
    Assignment,
    AssignmentStatus,
    Campaign,
    ConsensusMode,
    Judgment,
    RankingBasis,
    Task,
)
from pool.query_params import int_param

PROGRESS_EVENT = "annotate-progress"
# Tasks built inside the request (about 0.7 s per 1,000 on a busy machine); beyond this, Celery continues.
SYNC_BUILD_LIMIT = 5000
SKIP_REASONS = [
    "Image does not load or is unreadable",
    "Captions are not in a language I read",
    "Offensive or unsafe content",
    "I cannot judge this image",
]


def _answer_from_post(post, caption_ids: list[int], criteria: list[dict]) -> tuple[list, dict, dict, str]:
    """The form (a rank number per caption, a radio per rating) as ranking, ratings and ranking basis.

    ``ranking_basis`` comes from the page: the script sends ``ratings`` (derived, shown live) or
    ``adjusted`` (the annotator moved captions); the plain form sends ``form``, where blank ranks mean
    "rank by my ratings" and ranks entered for every caption are the annotator's own. Anything else,
    an empty value included, is refused by the service: the display order is never taken as a ranking.
    Also returns the raw values so an error page can show the annotator what they entered.
    """
    tier_numbers: dict[int, int | None] = {}
    raw: dict[str, str] = {}
    for cid in caption_ids:
        value = post.get(f"tier_{cid}", "").strip()
        raw[f"tier_{cid}"] = value
        tier_numbers[cid] = int_param(value)
    ratings: dict[str, dict] = {}
    for cid in caption_ids:
        row = {}
        for criterion in criteria:
            name = f"rate_{cid}_{criterion['key']}"
            value = post.get(name, "").strip()
            raw[name] = value
            if value:
                row[criterion["key"]] = value
        ratings[str(cid)] = row
    unranked = [cid for cid, n in tier_numbers.items() if n is None]
    ranking = services.ranking_from_tier_numbers(tier_numbers)
    if unranked and len(unranked) == len(caption_ids):
        ranking = []
    basis = post.get("ranking_basis", "").strip()
    raw["ranking_basis"] = basis
    if basis == "form":
        basis = RankingBasis.RATINGS if not ranking else RankingBasis.CONFIRMED
    elif basis not in (RankingBasis.RATINGS, RankingBasis.ADJUSTED):
        basis = ""
    return ranking, ratings, raw, basis


def _task_context(request, campaign: Campaign, assignment: Assignment | None, **extra) -> dict:
    user = request.user
    context = {
        "campaign": campaign,
        # Lazy: the htmx task partial does not show the counters (they refresh through their own request
        # on the HX-Trigger event), so a submit does not pay for counting them twice.
        "progress": SimpleLazyObject(lambda: selectors.campaign_progress(campaign=campaign, user=user)),
        "first_time": SimpleLazyObject(
            lambda: not Judgment.objects.filter(user=user, task__campaign=campaign).exists()
        ),
        "skip_reasons": SKIP_REASONS,
        "client_key": uuid.uuid4(),
        "raw": {},
        "error": None,
        "view": None,
        "revising": None,
        # The judgments the annotator may still correct, newest first (the "p" key opens the first).
        "recent": SimpleLazyObject(lambda: selectors.judgments_revisable(campaign=campaign, user=user)),
    }
    revising = extra.get("revising")
    raw = extra.get("raw") or {}
    if revising is not None:
        view = selectors.judgment_view(judgment=revising)
        context["view"] = view
        context["cards"] = _cards(view, raw or _raw_from_judgment(revising))
        # Judgments from before the basis was recorded keep their stored order as the annotator's own.
        context["basis"] = raw.get("ranking_basis") or revising.ranking_basis or RankingBasis.CONFIRMED
        context["form_action"] = reverse("annotate:revise", args=[campaign.pk, revising.pk])
        context["storage_key"] = f"loupe-revise:{revising.pk}:{revising.version}"
    elif assignment is not None:
        view = selectors.task_view(assignment=assignment)
        context["view"] = view
        context["cards"] = _cards(view, raw)
        context["basis"] = raw.get("ranking_basis", "")
        context["form_action"] = reverse("annotate:submit", args=[campaign.pk, assignment.task_id])
        context["storage_key"] = f"loupe-task:{campaign.pk}:{assignment.task_id}:{assignment.pk}"
        context["state_url"] = reverse("annotate:task_state", args=[campaign.pk, assignment.task_id])
        context["minutes_left"] = max(0, int((assignment.expires_at - timezone.now()).total_seconds() // 60))
    context.update(extra)
    return context


def _raw_from_judgment(judgment: Judgment) -> dict:
    """A stored judgment as the form's raw values: rank numbers (1, 2, 2, 4 for ties) and ratings."""
    raw: dict[str, str] = {"ranking_basis": judgment.ranking_basis}
    position = 1
    for tier in judgment.ranking:
        for cid in tier:
            raw[f"tier_{cid}"] = str(position)
        position += len(tier)
    for cid, row in judgment.ratings.items():
        for key, value in row.items():
            raw[f"rate_{cid}_{key}"] = str(value)
    return raw


def _cards(view: selectors.TaskView, raw: dict) -> list[dict]:
    """Per caption: its rank choices and rating options, with what the annotator entered before an error."""
    n = len(view.captions)
    cards = []
    for caption in view.captions:
        tier = raw.get(f"tier_{caption.id}", "")
        rows = []
        for criterion in view.criteria:
            chosen = raw.get(f"rate_{caption.id}_{criterion['key']}", "")
            rows.append(
                {
                    "key": criterion["key"],
                    "label": criterion["label"],
                    "name": f"rate_{caption.id}_{criterion['key']}",
                    "options": [
                        {"value": level, "anchor": anchor, "checked": chosen == str(level)}
                        for level, anchor in enumerate(criterion["anchors"], start=1)
                    ],
                }
            )
        cards.append(
            {
                "caption": caption,
                "tier_name": f"tier_{caption.id}",
                "tiers": [{"value": k, "selected": tier == str(k)} for k in range(1, n + 1)],
                "rows": rows,
            }
        )
    return cards


def _render_task(request, campaign: Campaign, assignment: Assignment | None, *, status: int = 200, **extra):
    template = "annotate/task.html#task-area" if request.htmx else "annotate/task.html"
    return render(request, template, _task_context(request, campaign, assignment, **extra), status=status)


@require_GET
@role_required(ANNOTATOR)
def campaign_list(request):
    rows = [
        {"campaign": c, "progress": selectors.campaign_progress(campaign=c, user=request.user)}
        for c in selectors.campaigns_active()
    ]
    return render(request, "annotate/campaign_list.html", {"rows": rows})


# Task pages are never cached: Back/Forward must not bring back a task that was submitted meanwhile
# (never_cache sends Cache-Control: no-store, which also keeps them out of the back/forward cache).
@require_GET
@never_cache
@role_required(ANNOTATOR)
def task_next(request, campaign_id: int):
    campaign = get_object_or_404(Campaign, pk=campaign_id, is_active=True)
    assignment = services.task_next(campaign=campaign, user=request.user)
    return _render_task(request, campaign, assignment)


def _after_answer(request, campaign: Campaign, notice: str) -> HttpResponse:
    if request.htmx:
        assignment = services.task_next(campaign=campaign, user=request.user)
        response = _render_task(request, campaign, assignment, notice=notice)
        response["HX-Trigger"] = PROGRESS_EVENT
        return response
    messages.success(request, notice)
    return redirect("annotate:next", campaign_id=campaign.pk)


def _refused(request, campaign: Campaign, task: Task, error: services.JudgmentError, raw: dict):
    """Re-show the task with the message while the annotator still holds it; otherwise just the message."""
    assignment = (
        Assignment.objects.filter(
            task=task, user=request.user, status=AssignmentStatus.ACTIVE, expires_at__gt=timezone.now()
        )
        .select_related("task")
        .first()
    )
    return _render_task(
        request, campaign, assignment, status=error.status, error=error.text, raw=raw, refused=True
    )


@require_POST
@never_cache
@role_required(ANNOTATOR)
def task_submit(request, campaign_id: int, task_id: int):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    task = get_object_or_404(Task.objects.select_related("campaign"), pk=task_id, campaign=campaign)
    caption_ids = services.task_caption_ids(task)
    ranking, ratings, raw, basis = _answer_from_post(request.POST, caption_ids, campaign.criteria)
    try:
        services.judgment_submit(
            user=request.user,
            task=task,
            ranking=ranking,
            ratings=ratings,
            client_key=request.POST.get("client_key", ""),
            duration_ms=request.POST.get("duration_ms") or 0,
            ranking_basis=basis,
        )
    except services.JudgmentError as error:
        return _refused(request, campaign, task, error, raw)
    return _after_answer(request, campaign, "Saved. Here is your next task.")


@require_GET
@never_cache
@role_required(ANNOTATOR)
def task_state(request, campaign_id: int, task_id: int):
    """Whether the user still holds the task: a page restored by Back/Forward or left open in another
    tab asks before the annotator types into it."""
    assignment = (
        Assignment.objects.filter(task_id=task_id, task__campaign_id=campaign_id, user=request.user)
        .only("status", "expires_at")
        .first()
    )
    if assignment is None:
        held, message = False, "This task is not assigned to you."
    elif assignment.status == AssignmentStatus.SUBMITTED:
        held, message = False, "You already submitted this task (perhaps in another tab)."
    elif assignment.status == AssignmentStatus.SKIPPED:
        held, message = False, "You skipped this task."
    elif assignment.status == AssignmentStatus.EXPIRED or assignment.expires_at <= timezone.now():
        held, message = False, "Your time on this task ran out and it went back to the queue."
    else:
        held, message = True, ""
    return JsonResponse(
        {"held": held, "message": message, "next_url": reverse("annotate:next", args=[campaign_id])}
    )


@require_http_methods(["GET", "POST"])
@never_cache
@role_required(ANNOTATOR)
def judgment_revise(request, campaign_id: int, judgment_id: int):
    """Reopen one of the user's latest judgments and save a corrected version (the old one is kept)."""
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    judgment = get_object_or_404(
        Judgment.objects.select_related("task", "task__campaign", "task__image", "assignment"),
        pk=judgment_id,
        task__campaign=campaign,
        user=request.user,
    )
    if request.method == "GET":
        if judgment.pk not in {
            j.pk for j in selectors.judgments_revisable(campaign=campaign, user=request.user)
        }:
            messages.warning(
                request,
                f"You can correct only your last {selectors.revise_limit()} judgments of this campaign.",
            )
            return redirect("annotate:next", campaign_id=campaign.pk)
        return _render_task(request, campaign, None, revising=judgment)
    caption_ids = services.task_caption_ids(judgment.task)
    ranking, ratings, raw, basis = _answer_from_post(request.POST, caption_ids, campaign.criteria)
    try:
        saved = services.judgment_revise(
            judgment=judgment,
            user=request.user,
            ranking=ranking,
            ratings=ratings,
            client_key=request.POST.get("client_key", ""),
            ranking_basis=basis,
        )
    except services.JudgmentError as error:
        if error.status == 400:
            return _render_task(
                request, campaign, None, status=400, error=error.text, raw=raw, revising=judgment
            )
        return _render_task(request, campaign, None, status=error.status, error=error.text, refused=True)
    response = _after_answer(
        request,
        campaign,
        f"Correction saved: task {judgment.task_id} is now version {saved.version} "
        "(the earlier version is kept). Here is your next task.",
    )
    if request.htmx:
        # The next task is on screen now: a reload or Back should not reopen the correction.
        response["HX-Replace-Url"] = reverse("annotate:next", args=[campaign.pk])
    return response


@require_POST
@never_cache
@role_required(ANNOTATOR)
def task_skip(request, campaign_id: int, task_id: int):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    task = get_object_or_404(Task, pk=task_id, campaign=campaign)
    reason = request.POST.get("reason", "").strip()
    if reason == "other":
        reason = request.POST.get("reason_other", "").strip()
    try:
        services.assignment_skip(user=request.user, task=task, reason=reason)
    except services.JudgmentError as error:
        return _refused(request, campaign, task, error, {})
    return _after_answer(request, campaign, "Skipped. Here is your next task.")


@require_GET
@role_required(ANNOTATOR)
def progress(request, campaign_id: int):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    return render(
        request,
        "annotate/task.html#progress",
        {"campaign": campaign, "progress": selectors.campaign_progress(campaign=campaign, user=request.user)},
    )


# --- campaign management (admin) -------------------------------------------------------------------


@require_GET
@role_required(ADMIN)
def campaign_detail(request, campaign_id: int):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    stats = selectors.campaign_stats(campaign=campaign)
    alpha_rows = [
        {"label": c["label"], "alpha": stats["alpha"].get(c["key"], float("nan"))} for c in campaign.criteria
    ]
    return render(
        request,
        "annotate/campaign_detail.html",
        {"campaign": campaign, "stats": stats, "alpha_rows": alpha_rows},
    )


def _build_tasks(request, campaign: Campaign, limit: int | None) -> int:
    """Build up to SYNC_BUILD_LIMIT tasks in the request; a larger pool continues in a Celery task."""
    built = services.campaign_tasks_build(
        campaign=campaign, limit=SYNC_BUILD_LIMIT if limit is None else min(limit, SYNC_BUILD_LIMIT)
    )
    if built == SYNC_BUILD_LIMIT and (limit is None or limit > SYNC_BUILD_LIMIT):
        remaining = None if limit is None else limit - SYNC_BUILD_LIMIT
        annotate_tasks.campaign_tasks_build.delay_on_commit(campaign.pk, remaining)
        messages.info(request, "The pool is large: the remaining tasks are being built in the background.")
    return built


class CampaignForm(forms.Form):
    name = forms.CharField(max_length=200)
    instructions = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}), required=False, help_text="Markdown. Shown on every task."
    )
    captions_per_task = forms.IntegerField(min_value=2, max_value=8, initial=4)
    overlap = forms.IntegerField(min_value=1, initial=3, help_text="Annotators who judge each task.")
    gold_rate = forms.FloatField(
        min_value=0, max_value=0.99, initial=0.05, help_text="Share of gold tasks, 0-0.99."
    )
    gold_accuracy_threshold = forms.FloatField(
        min_value=0, max_value=1, initial=0.6, help_text="Annotators below this gold accuracy are flagged."
    )
    assignment_minutes = forms.IntegerField(
        min_value=1, initial=30, help_text="A held task returns after this."
    )
    consensus_mode = forms.ChoiceField(choices=ConsensusMode.choices, initial=ConsensusMode.EACH)
    image_sources = forms.CharField(required=False, help_text="Comma-separated import sources; empty = all.")
    caption_sources = forms.CharField(
        required=False, help_text="Comma-separated caption sources (alt, synthetic, model, rewrite, human)."
    )
    build_limit = forms.IntegerField(
        min_value=0,
        required=False,
        help_text="Build at most this many tasks now; empty = every usable image.",
    )


def _split(value: str) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@require_http_methods(["GET", "POST"])
@role_required(ADMIN)
def campaign_new(request):
    form = CampaignForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        pool_filter = {}
        if _split(data["image_sources"]):
            pool_filter["image_sources"] = _split(data["image_sources"])
        if _split(data["caption_sources"]):
            pool_filter["caption_sources"] = _split(data["caption_sources"])
        try:
            with transaction.atomic():
                campaign = services.campaign_create(
                    name=data["name"],
                    instructions=data["instructions"],
                    captions_per_task=data["captions_per_task"],
                    overlap=data["overlap"],
                    gold_rate=data["gold_rate"],
                    assignment_minutes=data["assignment_minutes"],
                    pool_filter=pool_filter,
                    consensus_mode=data["consensus_mode"],
                )
                campaign.gold_accuracy_threshold = data["gold_accuracy_threshold"]
                campaign.save(update_fields=["gold_accuracy_threshold"])
        except ValidationError as error:
            form.add_error(None, error)
        else:
            built = _build_tasks(request, campaign, data["build_limit"])
            messages.success(request, f"Campaign “{campaign.name}” created with {built} tasks.")
            return redirect("annotate:campaign", campaign_id=campaign.pk)
    return render(request, "annotate/campaign_new.html", {"form": form}, status=400 if form.errors else 200)


@require_POST
@role_required(ADMIN)
def campaign_build(request, campaign_id: int):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    limit = request.POST.get("limit", "").strip()
    built = _build_tasks(request, campaign, int_param(limit))
    messages.success(request, f"Added {built} tasks from new pool images.")
    return redirect("annotate:campaign", campaign_id=campaign.pk)


@require_GET
@role_required(ADMIN)
def campaign_export(request, campaign_id: int, fmt: str):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    writers = {"coco_hf": (judgments_coco_hf, "json"), "pairs": (preference_pairs_jsonl, "jsonl")}
    if fmt not in writers:
        raise Http404(f"Unknown export format {fmt!r}; use coco_hf or pairs.")
    writer, suffix = writers[fmt]
    # Spooled to disk, not memory: a campaign's export can be large.
    buffer = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - FileResponse closes it
    text = io.TextIOWrapper(buffer, encoding="utf-8", write_through=True)
    writer(campaign=campaign, stream=text)
    text.flush()
    text.detach()
    buffer.seek(0)
    name = f"{campaign.name.replace(' ', '_')}-{fmt}.{suffix}"
    return FileResponse(buffer, as_attachment=True, filename=name, content_type="application/json")
