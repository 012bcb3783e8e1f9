"""When the loop runs: beat's tick and the retrain threshold it checks."""

from __future__ import annotations

from annotate.models import Campaign, Judgment
from loop.lock import busy_message, loop_unfinished
from loop.runs import LoopBusy
from loop.services import loop_start
from scoring.active_model import loop_encoder_get
from training.models import RewardModel
from training.selectors import retrain_thresholds

# Retrain once this many judgments arrived since the last model trained for the campaign (promoted or
# not: a candidate the gate refused is not retrained every tick on the same data). The setting
# LOUPE_RETRAIN_AFTER_JUDGMENTS holds it (default 50); a campaign overrides it with ``selection_mix["retrain_after"]``.
# 50 judgments of 4 captions are 300 ranked pairs: enough to move a small head, few enough that
# annotators see the queue adapt within a session.


def retrain_after_default() -> int:
    return retrain_thresholds()["retrain_after"]


def retrain_after(campaign: Campaign) -> int:
    default = retrain_after_default()
    value = (campaign.selection_mix or {}).get("retrain_after", default)
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return default


def loop_should_run(*, campaign: Campaign, encoder: str | None = None) -> tuple[bool, str]:
    """Whether enough judgments arrived since the last model trained for this campaign and encoder."""
    encoder = encoder or loop_encoder_get()
    if not campaign.is_active:
        return False, f"campaign '{campaign}' is not active"
    threshold = retrain_after(campaign)
    latest = RewardModel.objects.filter(campaign=campaign, encoder=encoder).order_by("-created_at").first()
    judgments = Judgment.objects.filter(task__campaign=campaign)
    if latest is not None:
        judgments = judgments.filter(created_at__gt=latest.created_at)
    new = judgments.count()
    since = f"since v{latest.version} was trained" if latest else "and no model trained yet"
    if new < threshold:
        return False, f"{new} new judgments {since}; retraining needs {threshold}"
    return True, f"{new} new judgments {since} (threshold {threshold})"


def loop_tick(*, filter_rule: dict | None = None) -> str:
    """Beat's entry: start at most one chain, for the first active campaign that needs a retrain.

    ``filter_rule`` (the periodic task's kwargs, editable in the admin) adds a filter run to the chain.
    """
    busy = loop_unfinished()
    if busy is not None:
        return f"busy: {busy_message(busy)}"
    for campaign in Campaign.objects.filter(is_active=True).order_by("id"):
        should, reason = loop_should_run(campaign=campaign)
        if not should:
            continue
        try:
            run = loop_start(campaign=campaign, trigger="beat", filter_rule=filter_rule)
        except LoopBusy as exc:
            return f"busy: {exc}"
        return f"started loop run {run.pk} for '{campaign}': {reason}"
    return "nothing to do: no campaign has enough new judgments"
