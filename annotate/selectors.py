"""Reads of the annotation workflow: progress, the task screen's data, agreement and annotator stats."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, F, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from annotate import agreement
from annotate.models import Assignment, AssignmentStatus, Campaign, Judgment, Task, TaskCaption, TaskStatus

# Agreement statistics of large campaigns read the judgments of this many (latest) tasks.
STATS_SAMPLE_TASKS = 2000
# An annotator is flagged for low gold accuracy only once this many gold judgments exist: one unlucky
# gold task is not evidence.
MIN_GOLD_FOR_FLAG = 3
# Likewise the median-time flag waits for this many judgments: two quick ones can be honest.
MIN_JUDGMENTS_FOR_SPEED_FLAG = 5
LETTERS = "ABCDEFGH"


def _today_start() -> datetime:
    now = timezone.localtime()
    return timezone.make_aware(datetime.combine(now.date(), time.min), now.tzinfo)


def campaigns_active() -> list[Campaign]:
    return list(Campaign.objects.filter(is_active=True).order_by("-created_at"))


def campaign_progress(*, campaign: Campaign, user) -> dict:
    """Numbers the annotator sees: done today, done in total, and tasks left for them in the queue.

    Shown after every submit, so each count is shaped for an index: the user's own rows are read
    index-only and matched to tasks by primary key, and the campaign-wide count of open tasks with room
    reads only ``task_open_slots_idx``.
    """
    # The user's judgments (all campaigns), then which of their tasks belong to this campaign by primary
    # key: with one big campaign a join would make PostgreSQL scan every task.
    mine = list(Judgment.objects.filter(user=user).values_list("task_id", "created_at"))
    in_campaign = Task.objects.filter(campaign=campaign)
    campaign_tasks: set[int] = set()
    ids = [task_id for task_id, _ in mine]
    for start in range(0, len(ids), 5000):
        campaign_tasks.update(
            in_campaign.filter(id__in=ids[start : start + 5000]).values_list("id", flat=True)
        )
    today = _today_start()
    done_total = sum(1 for task_id, _ in mine if task_id in campaign_tasks)
    done_today = sum(1 for task_id, created in mine if task_id in campaign_tasks and created >= today)
    seen = Assignment.objects.filter(user=user).exclude(status=AssignmentStatus.EXPIRED).values("task_id")
    # Tasks this user could still be given; gold is counted like any task so it stays invisible.
    with_room = in_campaign.filter(status=TaskStatus.OPEN).filter(
        Q(is_gold=True) | Q(judgment_count__lt=campaign.overlap - F("claim_count"))
    )
    queue_left = with_room.count() - with_room.filter(id__in=seen).count()
    return {"done_today": done_today, "done_total": done_total, "queue_left": queue_left}


@dataclass
class CaptionView:
    id: int
    letter: str
    text: str


@dataclass
class TaskView:
    """What the task screen shows: captions in a display order stable for the assignment."""

    assignment: Assignment
    task: Task
    captions: list[CaptionView]
    criteria: list[dict]
    tiers: list[int] = field(default_factory=list)


def _task_view(task: Task, assignment: Assignment | None, seed: str) -> TaskView:
    rows = list(
        TaskCaption.objects.filter(task=task).order_by("position").values_list("caption_id", "caption__text")
    )
    # Shuffled per assignment: annotators never learn a position bias from the build order, and a
    # reload shows the same order.
    random.Random(seed).shuffle(rows)
    captions = [CaptionView(id=cid, letter=LETTERS[i], text=text) for i, (cid, text) in enumerate(rows)]
    return TaskView(assignment=assignment, task=task, captions=captions, criteria=task.campaign.criteria)


def task_view(*, assignment: Assignment) -> TaskView:
    return _task_view(assignment.task, assignment, f"{assignment.pk}")


def judgment_view(*, judgment: Judgment) -> TaskView:
    """The task of a judgment being corrected, in the order the annotator saw it the first time."""
    assignment = judgment.assignment
    seed = f"{judgment.assignment_id}" if judgment.assignment_id else f"judgment-{judgment.pk}"
    return _task_view(judgment.task, assignment, seed)


def revise_limit() -> int:
    return max(0, int(getattr(settings, "LOUPE_REVISE_LAST_JUDGMENTS", 5)))


def judgments_revisable(*, campaign: Campaign, user) -> list[Judgment]:
    """The user's latest judgments of the campaign that they may still correct, newest first."""
    return list(
        Judgment.objects.filter(user=user, task__campaign=campaign)
        .select_related("task", "task__image")
        .order_by("-created_at", "-id")[: revise_limit()]
    )


def _judgments_by_task(campaign: Campaign, task_ids: list[int] | None = None) -> dict[int, list[Judgment]]:
    grouped: dict[int, list[Judgment]] = defaultdict(list)
    judgments = Judgment.objects.filter(task__campaign=campaign)
    if task_ids is not None:
        judgments = Judgment.objects.filter(task_id__in=task_ids)
    for judgment in (
        judgments.only("id", "task_id", "user_id", "ranking", "ratings", "duration_ms", "created_at")
        .order_by("task_id", "id")
        .iterator(chunk_size=5000)
    ):
        grouped[judgment.task_id].append(judgment)
    return grouped


def task_agreement(*, task: Task) -> dict:
    """Ranking agreement of one task's judgments: mean pairwise tau-b and Kendall's W."""
    rankings = [j.ranking for j in Judgment.objects.filter(task=task).order_by("id")]
    return {
        "judgments": len(rankings),
        "mean_tau": agreement.mean_pairwise_tau(rankings) if len(rankings) >= 2 else float("nan"),
        "kendalls_w": agreement.kendalls_w(rankings) if len(rankings) >= 2 else float("nan"),
    }


def _nan_mean(values) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return float(sum(clean) / len(clean)) if clean else float("nan")


def annotator_stats(
    *, campaign: Campaign, by_task: dict[int, list[Judgment]] | None = None, exact_counts: bool = False
) -> list[dict]:
    """Per annotator: judgments, agreement with the leave-one-out consensus, gold accuracy, median time.

    With ``exact_counts`` (``by_task`` is a sample) the judgment counts come from SQL over the campaign.
    """
    by_task = by_task if by_task is not None else _judgments_by_task(campaign)
    gold = dict(Task.objects.filter(campaign=campaign, is_gold=True).values_list("id", "gold_ranking"))
    loo: dict[int, list[float]] = defaultdict(list)
    gold_scores: dict[int, list[float]] = defaultdict(list)
    times: dict[int, list[int]] = defaultdict(list)
    for task_id, judgments in by_task.items():
        for j in judgments:
            times[j.user_id].append(j.duration_ms)
            if task_id in gold and gold[task_id]:
                gold_scores[j.user_id].append(agreement.pairwise_accuracy(j.ranking, gold[task_id]))
        if len(judgments) >= 2:
            for user_id, tau in agreement.leave_one_out_agreement(
                {j.user_id: j.ranking for j in judgments}
            ).items():
                loo[user_id].append(tau)
    counts = {uid: len(ts) for uid, ts in times.items()}
    if exact_counts:
        counts = dict(
            Judgment.objects.filter(task__campaign=campaign)
            .values_list("user_id")
            .annotate(n=Count("id"))
            .values_list("user_id", "n")
        )
    names = dict(get_user_model().objects.filter(id__in=list(counts)).values_list("id", "username"))
    min_seconds = float(getattr(settings, "LOUPE_MIN_MEDIAN_SECONDS_PER_TASK", 2.0))
    rows = []
    for user_id in sorted(counts, key=lambda uid: names.get(uid, "")):
        gold_list = [g for g in gold_scores.get(user_id, []) if not math.isnan(g)]
        gold_accuracy = _nan_mean(gold_list)
        median_seconds = statistics.median(times[user_id]) / 1000 if times.get(user_id) else float("nan")
        low_gold = len(gold_list) >= MIN_GOLD_FOR_FLAG and gold_accuracy < campaign.gold_accuracy_threshold
        too_fast = (
            len(times.get(user_id, [])) >= MIN_JUDGMENTS_FOR_SPEED_FLAG and median_seconds < min_seconds
        )
        rows.append(
            {
                "user_id": user_id,
                "username": names.get(user_id, str(user_id)),
                "judgments": counts[user_id],
                "loo_agreement": _nan_mean(loo.get(user_id, [])),
                "gold_judgments": len(gold_list),
                "gold_accuracy": gold_accuracy,
                "median_seconds": median_seconds,
                "low_gold": low_gold,
                "too_fast": too_fast,
                "min_median_seconds": min_seconds,
                "flagged": low_gold or too_fast,
            }
        )
    return rows


def criterion_alpha(
    *, campaign: Campaign, by_task: dict[int, list[Judgment]] | None = None
) -> dict[str, float]:
    """Krippendorff's alpha (ordinal) per criterion; units are (task, caption) pairs, coders annotators."""
    by_task = by_task if by_task is not None else _judgments_by_task(campaign)
    result = {}
    for criterion in campaign.criteria:
        key = criterion["key"]
        units = []
        for judgments in by_task.values():
            if len(judgments) < 2:
                continue
            caption_ids = judgments[0].ratings.keys()
            for cid in caption_ids:
                units.append([j.ratings.get(cid, {}).get(key) for j in judgments])
        result[key] = agreement.krippendorff_alpha_ordinal(units)
    return result


def _stats_sample(campaign: Campaign, limit: int) -> tuple[list[int] | None, bool]:
    """Task ids whose judgments the agreement statistics read: all of them in a small campaign; in a large
    one the latest ``limit`` tasks with two or more judgments plus every gold task (gold accuracy needs all
    gold judgments, and there are few)."""
    overlapping = Task.objects.filter(campaign=campaign, judgment_count__gte=2)
    if overlapping.count() <= limit:
        return None, False
    latest = list(overlapping.order_by("-id").values_list("id", flat=True)[:limit])
    gold = Task.objects.filter(campaign=campaign, is_gold=True, judgment_count__gt=0).values_list(
        "id", flat=True
    )
    return sorted(set(latest) | set(gold)), True


def campaign_stats(*, campaign: Campaign, days: int = 30, sample_tasks: int = STATS_SAMPLE_TASKS) -> dict:
    """Everything the campaign page shows. Counts are exact SQL aggregates; agreement statistics read the
    judgments of at most ``sample_tasks`` tasks (see ``_stats_sample``) so the page stays fast at any size."""
    sample_ids, sampled = _stats_sample(campaign, sample_tasks)
    by_task = _judgments_by_task(campaign, sample_ids)
    task_taus, task_ws = [], []
    for judgments in by_task.values():
        if len(judgments) >= 2:
            rankings = [j.ranking for j in judgments]
            task_taus.append(agreement.mean_pairwise_tau(rankings))
            task_ws.append(agreement.kendalls_w(rankings))
    counts = Task.objects.filter(campaign=campaign).aggregate(
        total=Count("id"),
        complete=Count("id", filter=Q(status=TaskStatus.COMPLETE)),
        gold=Count("id", filter=Q(is_gold=True)),
    )
    since = _today_start() - timedelta(days=days - 1)
    per_day = dict(
        Judgment.objects.filter(task__campaign=campaign, created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values_list("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    day_labels, day_values = [], []
    for offset in range(days):
        day = (since + timedelta(days=offset)).date()
        day_labels.append(day.strftime("%m-%d"))
        day_values.append(per_day.get(day, 0))
    hist_counts, hist_edges = agreement.histogram(task_taus, lo=-1.0, hi=1.0, bins=10)
    return {
        "tasks_total": counts["total"],
        "tasks_complete": counts["complete"],
        "tasks_gold": counts["gold"],
        "judgments": Judgment.objects.filter(task__campaign=campaign).count(),
        "sampled": sampled,
        "active_assignments": Assignment.objects.filter(
            task__campaign=campaign, status=AssignmentStatus.ACTIVE, expires_at__gt=timezone.now()
        ).count(),
        "tasks_with_overlap": len(task_taus),
        "mean_tau": _nan_mean(task_taus),
        "mean_w": _nan_mean(task_ws),
        "alpha": criterion_alpha(campaign=campaign, by_task=by_task),
        "annotators": annotator_stats(campaign=campaign, by_task=by_task, exact_counts=sampled),
        "tau_hist_counts": hist_counts,
        "tau_hist_edges": hist_edges,
        "day_labels": day_labels,
        "day_values": day_values,
    }
