"""Curator decisions: accept (always kept), reject (always dropped), rewrite (a new caption replaces it).

Every decision is a ``Review`` row (the audit trail) and is mirrored on ``Caption.decision``, with
``decision_version`` incremented. Optimistic concurrency: the curator's form carries the version it saw
and the update only applies if the caption is still at that version, so two curators deciding the same
pair at once never overwrite each other silently; the second gets ``DecisionConflict`` with the newer
state to show.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F

from annotate.models import Campaign
from curate.models import Review
from curate.rewrite import RewriteRefused, rewrite_caption_create, rewrite_send_to_annotation
from pool.models import Caption, CuratorDecision

DECISIONS = (CuratorDecision.ACCEPT, CuratorDecision.REJECT, CuratorDecision.REWRITE)


class DecisionConflict(Exception):
    """Another curator decided this caption after the version the form was built from."""

    def __init__(self, caption: Caption, latest: Review | None):
        self.caption = caption
        self.latest = latest
        who = latest.reviewer.username if latest else "someone"
        super().__init__(
            f"{who} already decided this pair ({caption.get_decision_display()}) while you were looking; "
            "their decision stands. Review it again if you disagree."
        )


class _StaleVersion(Exception):
    pass


@dataclass
class BulkResult:
    decided: list[int] = field(default_factory=list)
    conflicts: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)


def review_decide(
    *,
    caption: Caption,
    reviewer,
    decision: str,
    expected_version: int,
    note: str = "",
    rewrite_text: str | None = None,
    campaign: Campaign | None = None,
) -> Review:
    """Record one decision on ``caption`` if it is still at ``expected_version``.

    ``rewrite`` needs ``rewrite_text`` (refused if empty or identical); with ``campaign`` the rewrite is
    also put in an annotation task beside its original.
    """
    if decision not in DECISIONS:
        raise ValueError(f"Unknown decision {decision!r}: expected one of {', '.join(DECISIONS)}.")
    try:
        with transaction.atomic():
            rewritten = None
            if decision == CuratorDecision.REWRITE:
                rewritten = rewrite_caption_create(original=caption, text=rewrite_text or "")
            # Compare-and-set in one UPDATE: the row lock it takes serialises concurrent curators.
            updated = Caption.objects.filter(pk=caption.pk, decision_version=expected_version).update(
                decision=decision, decision_version=F("decision_version") + 1
            )
            if not updated:
                raise _StaleVersion  # rolls back the rewrite caption too
            review = Review.objects.create(
                caption=caption,
                decision=decision,
                note=note.strip(),
                rewritten_caption=rewritten,
                reviewer=reviewer,
            )
            if rewritten is not None and campaign is not None:
                rewrite_send_to_annotation(campaign=campaign, original=caption, rewritten=rewritten)
    except _StaleVersion:
        current = Caption.objects.get(pk=caption.pk)
        latest = Review.objects.filter(caption=current).select_related("reviewer").order_by("-id").first()
        raise DecisionConflict(current, latest) from None
    caption.refresh_from_db(fields=["decision", "decision_version"])
    return review


class NothingToUndo(ValueError):
    """The caption has no decision left to take back."""


def _effective_reviews(caption: Caption) -> list[Review]:
    """The caption's decisions still in force, oldest first: each undo takes back the newest of them."""
    stack: list[Review] = []
    for review in Review.objects.filter(caption=caption).order_by("id"):
        if review.decision == Review.UNDO:
            if stack:
                stack.pop()
        else:
            stack.append(review)
    return stack


def review_undo(*, caption: Caption, reviewer, expected_version: int, note: str = "") -> Review:
    """Take back the caption's latest decision still in force; the decision before it (or none) applies
    again. The undo is itself a review in the audit trail (``decision="undo"``, ``undoes``); a rewrite's
    new caption is rejected so that filters drop it, with its own review saying why.

    Same optimistic concurrency as ``review_decide``: ``DecisionConflict`` if someone decided meanwhile.
    """
    try:
        with transaction.atomic():
            stack = _effective_reviews(caption)
            if not stack:
                raise NothingToUndo(f"Pair {caption.pk} has no decision to undo.")
            undone = stack[-1]
            restored = stack[-2].decision if len(stack) > 1 else CuratorDecision.NONE
            updated = Caption.objects.filter(pk=caption.pk, decision_version=expected_version).update(
                decision=restored, decision_version=F("decision_version") + 1
            )
            if not updated:
                raise _StaleVersion
            text = note.strip() or f"undid {undone.decision} by {undone.reviewer.username}"
            review = Review.objects.create(
                caption=caption, decision=Review.UNDO, note=text, undoes=undone, reviewer=reviewer
            )
            if undone.rewritten_caption_id:
                rewritten = Caption.objects.filter(pk=undone.rewritten_caption_id).first()
                if rewritten is not None and rewritten.decision != CuratorDecision.REJECT:
                    Caption.objects.filter(pk=rewritten.pk).update(
                        decision=CuratorDecision.REJECT, decision_version=F("decision_version") + 1
                    )
                    Review.objects.create(
                        caption=rewritten,
                        decision=CuratorDecision.REJECT,
                        note=f"the rewrite of pair {caption.pk} was undone",
                        reviewer=reviewer,
                    )
    except _StaleVersion:
        current = Caption.objects.get(pk=caption.pk)
        latest = Review.objects.filter(caption=current).select_related("reviewer").order_by("-id").first()
        raise DecisionConflict(current, latest) from None
    caption.refresh_from_db(fields=["decision", "decision_version"])
    return review


def cluster_note(kept_image_id: int) -> str:
    return f"near duplicate of image {kept_image_id} (cluster review)"


def cluster_decide(*, kept_image, reviewer) -> list[Review]:
    """Confirm a near-duplicate cluster: every undecided caption of its duplicate images is rejected
    (always dropped), one review each, so the audit trail and undo work per caption as usual."""
    from pool.models import ImageStatus

    captions = Caption.objects.filter(
        image__duplicate_of=kept_image, image__status=ImageStatus.NEAR_DUPLICATE, decision=""
    ).order_by("id")
    made = []
    for caption in captions:
        try:
            made.append(
                review_decide(
                    caption=caption,
                    reviewer=reviewer,
                    decision=CuratorDecision.REJECT,
                    expected_version=caption.decision_version,
                    note=cluster_note(kept_image.pk),
                )
            )
        except DecisionConflict:
            continue  # decided by someone else meanwhile: their decision stands
    return made


def cluster_undo(*, kept_image, reviewer) -> list[Review]:
    """Take back a cluster confirmation: the captions whose decision in force is that cluster's reject."""
    undone = []
    note = cluster_note(kept_image.pk)
    for caption in Caption.objects.filter(image__duplicate_of=kept_image, decision=CuratorDecision.REJECT):
        stack = _effective_reviews(caption)
        if stack and stack[-1].note == note:
            try:
                undone.append(
                    review_undo(caption=caption, reviewer=reviewer, expected_version=caption.decision_version)
                )
            except (DecisionConflict, NothingToUndo):
                continue
    return undone


def review_decide_bulk(
    *, selection: list[tuple[int, int]], reviewer, decision: str, note: str = ""
) -> BulkResult:
    """Accept or reject many pairs, each under its own version check: ``selection`` is (caption id, version)."""
    if decision not in (CuratorDecision.ACCEPT, CuratorDecision.REJECT):
        raise ValueError("Bulk actions can accept or reject; rewrite one caption at a time.")
    result = BulkResult()
    captions = Caption.objects.in_bulk([cid for cid, _ in selection])
    for cid, version in selection:
        caption = captions.get(cid)
        if caption is None:
            result.refused[cid] = f"caption {cid} does not exist"
            continue
        try:
            review_decide(
                caption=caption, reviewer=reviewer, decision=decision, expected_version=version, note=note
            )
            result.decided.append(cid)
        except DecisionConflict:
            result.conflicts.append(cid)
        except RewriteRefused as exc:  # pragma: no cover - not reachable for accept/reject
            result.refused[cid] = str(exc)
    return result
