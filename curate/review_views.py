"""Curator review: the flagged-pairs queue, decisions (one or a selection), rewrites, the audit trail.

Plain forms first: every action is a POST that redirects back to the queue. With htmx the decided item
is swapped out in place, and a conflict (another curator decided first) comes back as 409 with the
newer decision shown in the item.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db.models import Max
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from accounts.roles import CURATOR, role_required
from annotate.models import Campaign
from curate.models import FlagReason, Review
from curate.rewrite import RewriteRefused, rewrite_suggestion_get
from curate.selectors import (
    QueueFilters,
    cluster_items,
    keyset_page,
    near_duplicate_clusters,
    review_audit,
    review_counts_by_reason,
    review_items,
    review_queue,
    score_context_default,
)
from curate.services import (
    DECISIONS,
    DecisionConflict,
    NothingToUndo,
    cluster_decide,
    cluster_undo,
    review_decide,
    review_decide_bulk,
    review_undo,
)
from curate.tasks import rewrite_suggest_task
from pool.models import Caption, CaptionSource, CuratorDecision, Image
from pool.query_params import INT64_MAX, int_param

PAGE_SIZE = 10


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _filters(params) -> QueueFilters:
    return QueueFilters(
        reason=params.get("reason", "") if params.get("reason", "") in FlagReason.values else "",
        source=params.get("source", "") if params.get("source", "") in CaptionSource.values else "",
        score=params.get("score", "reward"),
        score_min=_float(params.get("score_min")),
        score_max=_float(params.get("score_max")),
        state=params.get("state", "undecided")
        if params.get("state") in ("undecided", "decided", "all")
        else "undecided",
    )


def _context(params):
    version = params.get("version")
    return score_context_default(
        encoder=params.get("encoder") or None,
        reward_model_version=int_param(version),
    )


def _queue_url(request) -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()}):
        return candidate
    return reverse("review:queue")


def _cursor(request) -> dict:
    """``after``/``before`` of a keyset page link (ids); anything else starts at the first page."""
    return {name: int_param(request.GET.get(name, "")) for name in ("after", "before")}


def _campaigns():
    return Campaign.objects.filter(is_active=True).order_by("name")


def _page_context(request, *, status_message: str = "") -> dict:
    filters = _filters(request.GET)
    context = _context(request.GET)
    # Near duplicates are reviewed one cluster at a time (the kept image beside its duplicates); "pairs"
    # lists their captions one by one instead.
    cluster_mode = filters.reason == FlagReason.NEAR_DUPLICATE and request.GET.get("view") != "pairs"
    clusters = []
    if cluster_mode:
        page = keyset_page(near_duplicate_clusters(state=filters.state), **_cursor(request), limit=PAGE_SIZE)
        clusters = cluster_items(kept_images=list(page.object_list))
        items = []
    else:
        queryset = review_queue(filters=filters, context=context)
        page = keyset_page(queryset, **_cursor(request), limit=PAGE_SIZE)
        items = review_items(captions=list(page.object_list), context=context)
    query = {k: v for k, v in request.GET.items() if k not in ("page", "after", "before") and v}
    return {
        "filters": filters,
        "score_context": context,
        "page": page,
        "items": items,
        "cluster_mode": cluster_mode,
        "clusters": clusters,
        "reasons": FlagReason.choices,
        "sources": CaptionSource.choices,
        "counts": review_counts_by_reason(),
        "campaigns": _campaigns(),
        "query": urlencode(query),
        "here": request.get_full_path(),
        "status_message": status_message,
    }


@require_GET
@role_required(CURATOR)
def queue(request):
    return render(request, "review/queue.html", _page_context(request))


def _item_response(
    request, caption: Caption, *, status: int = 200, notice: str = "", conflict=None, notice_ok: str = ""
):
    context = _context(request.POST)
    (item,) = review_items(captions=[caption], context=context)
    return render(
        request,
        "review/queue.html#item",
        {
            "item": item,
            "notice": notice,
            "notice_ok": notice_ok,
            "conflict": conflict,
            "campaigns": _campaigns(),
            "here": _queue_url(request),
            "score_context": context,
        },
        status=status,
    )


@require_POST
@role_required(CURATOR)
def decide(request, caption_id: int):
    caption = get_object_or_404(Caption.objects.select_related("image"), pk=caption_id)
    decision = request.POST.get("decision", "")
    rewrite_text = request.POST.get("rewrite_text")
    if request.POST.get("accept_suggestion"):
        # The suggestion's own button: accepting it is a rewrite with its text.
        decision, rewrite_text = CuratorDecision.REWRITE, request.POST["accept_suggestion"]
    version = int_param(request.POST.get("expected_version"))
    if decision not in DECISIONS or version is None:
        message = "Choose accept, reject or rewrite (the form was incomplete; reload the page)."
        if request.htmx:
            return _item_response(request, caption, status=400, notice=message)
        messages.error(request, message)
        return redirect(_queue_url(request))
    campaign = None
    campaign_id = int_param(request.POST.get("campaign"), maximum=INT64_MAX)
    if decision == CuratorDecision.REWRITE and campaign_id is not None:
        campaign = Campaign.objects.filter(pk=campaign_id).first()
    try:
        review = review_decide(
            caption=caption,
            reviewer=request.user,
            decision=decision,
            expected_version=version,
            note=request.POST.get("note", ""),
            rewrite_text=rewrite_text,
            campaign=campaign,
        )
    except DecisionConflict as conflict:
        if request.htmx:
            return _item_response(request, conflict.caption, status=409, conflict=conflict)
        messages.warning(request, str(conflict))
        return render(request, "review/queue.html", _page_context(request), status=409)
    except RewriteRefused as exc:
        if request.htmx:
            return _item_response(request, caption, status=400, notice=str(exc))
        messages.error(request, f"Not saved: {exc}")
        return redirect(_queue_url(request))
    text = {
        CuratorDecision.ACCEPT: "Accepted: always kept",
        CuratorDecision.REJECT: "Rejected: always dropped",
        CuratorDecision.REWRITE: "Rewritten",
    }[decision]
    if review.rewritten_caption_id:
        text += f" as “{review.rewritten_caption.text}”"
        if campaign:
            text += f", sent to campaign {campaign.name}"
    if request.htmx:
        response = render(
            request,
            "review/queue.html#decided",
            {"caption": caption, "text": text, "review": review, "here": _queue_url(request)},
        )
        response["HX-Trigger"] = "review-decided"
        return response
    messages.success(request, f"{text} ({caption.text[:60]})")
    return redirect(_queue_url(request))


@require_POST
@role_required(CURATOR)
def undo(request, caption_id: int):
    """Take back the pair's latest decision (the undo is an audit entry of its own)."""
    caption = get_object_or_404(Caption.objects.select_related("image"), pk=caption_id)
    version = request.POST.get("expected_version", "")
    try:
        review = review_undo(
            caption=caption,
            reviewer=request.user,
            expected_version=int(version) if version.isdigit() else -1,
        )
    except DecisionConflict as conflict:
        if request.htmx:
            return _item_response(request, conflict.caption, status=409, conflict=conflict)
        messages.warning(request, str(conflict))
        return redirect(_queue_url(request))
    except NothingToUndo as exc:
        if request.htmx:
            return _item_response(request, caption, status=400, notice=str(exc))
        messages.error(request, str(exc))
        return redirect(_queue_url(request))
    text = f"Undone: {review.undoes.decision} by {review.undoes.reviewer.username} no longer applies" + (
        f"; the pair is {caption.get_decision_display()} again."
        if caption.decision
        else "; the pair is undecided."
    )
    if request.htmx:
        response = _item_response(request, caption, notice_ok=text)
        response["HX-Trigger"] = "review-undone"
        return response
    messages.success(request, text)
    return redirect(_queue_url(request))


def _cluster_response(request, kept: Image, *, decided: list, undone: list):
    (cluster,) = cluster_items(kept_images=[kept])
    template = "review/queue.html#cluster-decided" if decided else "review/queue.html#cluster"
    return render(
        request,
        template,
        {"cluster": cluster, "decided": decided, "undone": undone, "here": _queue_url(request)},
    )


@require_POST
@role_required(CURATOR)
def cluster_decide_view(request, image_id: int):
    """Confirm a near-duplicate cluster: the duplicates' captions are dropped (one review each)."""
    kept = get_object_or_404(Image, pk=image_id)
    decided = cluster_decide(kept_image=kept, reviewer=request.user)
    text = (
        f"Dropped {len(decided)} caption{'s' if len(decided) != 1 else ''} of the near duplicates of image {kept.pk}."
        if decided
        else "Nothing left to decide in this cluster (someone decided it meanwhile)."
    )
    if request.htmx:
        response = _cluster_response(request, kept, decided=decided, undone=[])
        response["HX-Trigger"] = "review-decided"
        return response
    messages.success(request, text)
    return redirect(_queue_url(request))


@require_POST
@role_required(CURATOR)
def cluster_undo_view(request, image_id: int):
    kept = get_object_or_404(Image, pk=image_id)
    undone = cluster_undo(kept_image=kept, reviewer=request.user)
    if request.htmx:
        return _cluster_response(request, kept, decided=[], undone=undone)
    messages.success(
        request, f"Undone: {len(undone)} caption(s) of the cluster of image {kept.pk} are undecided again."
    )
    return redirect(_queue_url(request))


@require_POST
@role_required(CURATOR)
def bulk(request):
    decision = request.POST.get("decision", "")
    selection = []
    for value in request.POST.getlist("selected"):
        cid, _, version = value.partition(":")
        cid, version = int_param(cid, maximum=INT64_MAX), int_param(version)
        if cid is not None and version is not None:
            selection.append((cid, version))
    if not selection:
        messages.error(request, "Select at least one pair (the checkboxes, or x on the keyboard).")
        return redirect(_queue_url(request))
    try:
        result = review_decide_bulk(
            selection=selection, reviewer=request.user, decision=decision, note=request.POST.get("note", "")
        )
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect(_queue_url(request))
    if result.decided:
        messages.success(request, f"{decision.capitalize()}ed {len(result.decided)} pair(s).")
    if result.conflicts:
        messages.warning(
            request,
            f"{len(result.conflicts)} pair(s) were decided by someone else meanwhile and were left as they are: "
            + ", ".join(str(c) for c in result.conflicts),
        )
    for cid, why in result.refused.items():
        messages.error(request, f"Pair {cid}: {why}")
    return redirect(_queue_url(request))


@require_POST
@role_required(CURATOR)
def suggest(request, caption_id: int):
    caption = get_object_or_404(Caption, pk=caption_id)
    rewrite_suggest_task.delay(caption.pk)
    if request.htmx:
        return _suggestion_response(request, caption)
    messages.info(request, "A rewrite suggestion is being generated; it appears under Rewrite when ready.")
    return redirect(f"{_queue_url(request)}#item-{caption.pk}")


@require_GET
@role_required(CURATOR)
def suggestion(request, caption_id: int):
    return _suggestion_response(request, get_object_or_404(Caption, pk=caption_id))


def _suggestion_response(request, caption: Caption):
    return render(
        request,
        "review/queue.html#suggestion",
        {"caption": caption, "suggestion": rewrite_suggestion_get(caption_id=caption.pk), "polling": True},
    )


@require_GET
@role_required(CURATOR)
def audit(request):
    curator = request.GET.get("curator", "")
    decision = request.GET.get("decision", "")
    page = keyset_page(
        review_audit(curator=curator, decision=decision), **_cursor(request), limit=50, descending=True
    )
    reviewer_ids = Review.objects.values_list("reviewer_id", flat=True).distinct()
    curators = get_user_model().objects.filter(id__in=reviewer_ids).order_by("username")
    query = urlencode({k: v for k, v in {"curator": curator, "decision": decision}.items() if v})
    # A decision can be undone from here while it is the newest entry of its pair.
    latest = set(
        Review.objects.filter(caption_id__in={r.caption_id for r in page})
        .values("caption_id")
        .annotate(last=Max("id"))
        .values_list("last", flat=True)
    )
    return render(
        request,
        "review/audit.html",
        {
            "page": page,
            "undoable": {r.pk for r in page if r.pk in latest and r.decision != Review.UNDO},
            "curator": curator,
            "decision": decision,
            "curators": curators,
            "decisions": (*DECISIONS, Review.UNDO),
            "query": query,
        },
    )
