"""Writes of the annotation workflow: campaigns, tasks, the claim queue, judgments and skips.

The queue's invariants, kept by the functions below and nowhere else:
- ``Task.judgment_count`` is the number of judgments of the task;
- ``Task.claim_count`` is the number of its assignments with status ``active``;
- a non-gold task is claimable while ``judgment_count + claim_count < overlap``, and becomes ``complete``
  when ``judgment_count`` reaches the overlap. Gold tasks are never complete: every annotator may meet each
  one once, which is what measures them.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Case, Count, F, Max, Value, When
from django.utils import timezone

from annotate.models import (
    Assignment,
    AssignmentStatus,
    Campaign,
    ConsensusMode,
    Judgment,
    JudgmentRevision,
    RankingBasis,
    Task,
    TaskCaption,
    TaskStatus,
    default_criteria,
)
from annotate.selectors import judgments_revisable, revise_limit
from pool.models import Caption, CaptionStatus, CuratorDecision, ImageStatus

MIN_CAPTIONS, MAX_CAPTIONS = 2, 8
# Said when a submit carries no ranking the annotator made: the display order is never a ranking.
NOT_RANKED = (
    "Rank the captions before submitting: rate every caption and the ranking follows your ratings, "
    "or put the captions in order yourself. Nothing was saved."
)
RATING_MIN, RATING_MAX = 1, 5
BUILD_CHUNK = 2000


class JudgmentError(ValidationError):
    """A refused submit, worded for the annotator. ``status`` is the HTTP status a view should answer."""

    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.status = status

    @property
    def text(self) -> str:
        return self.messages[0]


# --- campaigns -----------------------------------------------------------------------------------


def _criteria_validate(criteria: list[dict]) -> list[dict]:
    if not isinstance(criteria, list) or not criteria:
        raise ValidationError("A campaign needs at least one criterion.")
    keys = set()
    cleaned = []
    for index, criterion in enumerate(criteria, start=1):
        if not isinstance(criterion, dict):
            raise ValidationError(f"Criterion {index} must be an object with key, label and anchors.")
        key, label, anchors = criterion.get("key"), criterion.get("label"), criterion.get("anchors")
        if not key or not isinstance(key, str) or not key.replace("_", "").isalnum():
            raise ValidationError(f"Criterion {index} needs a key made of letters, digits and underscores.")
        if key in keys:
            raise ValidationError(f"Criterion key {key!r} appears twice.")
        keys.add(key)
        if not label or not isinstance(label, str):
            raise ValidationError(f"Criterion {key!r} needs a label.")
        if (
            not isinstance(anchors, list)
            or len(anchors) != RATING_MAX
            or not all(isinstance(a, str) and a.strip() for a in anchors)
        ):
            raise ValidationError(f"Criterion {key!r} needs exactly five anchor texts, one per level 1-5.")
        cleaned.append({"key": key, "label": label, "anchors": [a.strip() for a in anchors]})
    return cleaned


def campaign_settings_validate(
    *, captions_per_task: int, overlap: int, gold_rate: float, assignment_minutes: int, consensus_mode: str
) -> None:
    if not MIN_CAPTIONS <= int(captions_per_task) <= MAX_CAPTIONS:
        raise ValidationError(f"Captions per task must be between {MIN_CAPTIONS} and {MAX_CAPTIONS}.")
    if int(overlap) < 1:
        raise ValidationError("Overlap (annotators per task) must be at least 1.")
    if not 0 <= float(gold_rate) < 1:
        raise ValidationError("Gold rate must be at least 0 and below 1 (it is a share of tasks).")
    if int(assignment_minutes) < 1:
        raise ValidationError("Assignments must last at least one minute.")
    if consensus_mode not in ConsensusMode.values:
        raise ValidationError(f"Consensus mode must be one of {', '.join(ConsensusMode.values)}.")


def campaign_create(
    *,
    name: str,
    instructions: str = "",
    criteria: list[dict] | None = None,
    captions_per_task: int = 4,
    overlap: int = 3,
    gold_rate: float = 0.05,
    assignment_minutes: int = 30,
    pool_filter: dict | None = None,
    consensus_mode: str = "each",
) -> Campaign:
    name = (name or "").strip()
    if not name:
        raise ValidationError("A campaign needs a name.")
    if Campaign.objects.filter(name=name).exists():
        raise ValidationError(f"A campaign named {name!r} already exists.")
    campaign_settings_validate(
        captions_per_task=captions_per_task,
        overlap=overlap,
        gold_rate=gold_rate,
        assignment_minutes=assignment_minutes,
        consensus_mode=consensus_mode,
    )
    pool_filter = dict(pool_filter or {})
    unknown = set(pool_filter) - {"image_sources", "caption_sources"}
    if unknown:
        raise ValidationError(
            f"Unknown pool filter keys: {', '.join(sorted(unknown))} (use image_sources, caption_sources)."
        )
    return Campaign.objects.create(
        name=name,
        instructions=instructions,
        criteria=_criteria_validate(criteria) if criteria is not None else default_criteria(),
        captions_per_task=int(captions_per_task),
        overlap=int(overlap),
        gold_rate=float(gold_rate),
        assignment_minutes=int(assignment_minutes),
        pool_filter=pool_filter,
        consensus_mode=consensus_mode,
    )


def _usable_captions(campaign: Campaign):
    captions = Caption.objects.filter(status=CaptionStatus.OK, image__status=ImageStatus.OK).exclude(
        decision=CuratorDecision.REJECT
    )
    sources = campaign.pool_filter.get("caption_sources")
    if sources:
        captions = captions.filter(source__in=sources)
    image_sources = campaign.pool_filter.get("image_sources")
    if image_sources:
        captions = captions.filter(image__source__in=image_sources)
    return captions


def _pick_captions(image_id: int, caption_ids: list[int], k: int) -> list[int]:
    # Seeded by the image so a rebuild chooses the same captions; the display order is shuffled
    # separately per assignment.
    ids = sorted(caption_ids)
    random.Random(image_id).shuffle(ids)
    return ids[:k]


def campaign_tasks_build(
    *, campaign: Campaign, limit: int | None = None, image_ids: Iterable[int] | None = None
) -> int:
    """Create one task per usable image with at least two usable captions; returns how many were created.

    Idempotent: images that already have a task in the campaign are skipped (rewrites enter through
    ``campaign_task_for_rewrite``).
    """
    captions = _usable_captions(campaign)
    if image_ids is not None:
        captions = captions.filter(image_id__in=list(image_ids))
    candidate_images = (
        captions.values("image_id")
        .annotate(n=Count("id"))
        .filter(n__gte=MIN_CAPTIONS)
        .exclude(image_id__in=Task.objects.filter(campaign=campaign).values("image_id"))
        .order_by("image_id")
        .values_list("image_id", flat=True)
    )
    created = 0
    chunk: list[int] = []

    def flush(ids: list[int]) -> int:
        by_image: dict[int, list[int]] = {}
        for image_id, caption_id in captions.filter(image_id__in=ids).values_list("image_id", "id"):
            by_image.setdefault(image_id, []).append(caption_id)
        with transaction.atomic():
            tasks = Task.objects.bulk_create(
                [Task(campaign=campaign, image_id=image_id) for image_id in ids if image_id in by_image]
            )
            links = []
            for task in tasks:
                picked = _pick_captions(task.image_id, by_image[task.image_id], campaign.captions_per_task)
                links.extend(
                    TaskCaption(task=task, caption_id=cid, position=pos) for pos, cid in enumerate(picked)
                )
            TaskCaption.objects.bulk_create(links, batch_size=5000)
        return len(tasks)

    for image_id in candidate_images.iterator(chunk_size=BUILD_CHUNK):
        if limit is not None and created + len(chunk) >= limit:
            break
        chunk.append(image_id)
        if len(chunk) >= BUILD_CHUNK:
            created += flush(chunk)
            chunk = []
    if chunk:
        created += flush(chunk)
    return created


def campaign_task_for_rewrite(
    *, campaign: Campaign, original_caption: Caption, rewritten_caption: Caption
) -> Task:
    """A new task that puts a curator's rewrite next to the original and the image's other captions.

    Idempotent: a task of this campaign that already holds the rewrite is returned as it is.
    """
    if rewritten_caption.image_id != original_caption.image_id:
        raise ValidationError("The rewrite and the original caption belong to different images.")
    existing = Task.objects.filter(campaign=campaign, captions=rewritten_caption).first()
    if existing:
        return existing
    others = list(
        _usable_captions(campaign)
        .filter(image_id=original_caption.image_id)
        .exclude(id__in=[original_caption.id, rewritten_caption.id])
        .values_list("id", flat=True)
    )
    picked = [rewritten_caption.id, original_caption.id] + _pick_captions(
        original_caption.image_id, others, campaign.captions_per_task - 2
    )
    # Rewrites go to the front of the queue: a curator is waiting to learn whether the rewrite is better.
    top = Task.objects.filter(campaign=campaign).aggregate(top=Max("priority"))["top"] or 0.0
    with transaction.atomic():
        task = Task.objects.create(campaign=campaign, image_id=original_caption.image_id, priority=top + 1.0)
        TaskCaption.objects.bulk_create(
            [TaskCaption(task=task, caption_id=cid, position=pos) for pos, cid in enumerate(picked)]
        )
    return task


def task_caption_ids(task: Task) -> list[int]:
    return list(
        TaskCaption.objects.filter(task=task).order_by("position").values_list("caption_id", flat=True)
    )


def ranking_normalise(
    ranking, *, caption_ids: list[int], captions: dict[int, str] | None = None
) -> list[list[int]]:
    """Check a ranking (tiers of caption ids, best first) against a task's captions; return it cleaned.

    Raises ``JudgmentError`` saying what is wrong in an annotator's words.
    """
    captions = captions or {}

    def name(cid: int) -> str:
        text = captions.get(cid)
        return f"“{text[:60]}{'…' if len(text) > 60 else ''}”" if text else f"caption {cid}"

    if not isinstance(ranking, list) or not ranking:
        raise JudgmentError("Rank the captions before submitting: the ranking is empty.")
    seen: list[int] = []
    tiers: list[list[int]] = []
    for tier in ranking:
        if not isinstance(tier, list | tuple) or not tier:
            raise JudgmentError("The ranking is malformed: every rank must hold at least one caption.")
        cleaned = []
        for item in tier:
            try:
                cid = int(item)
            except (TypeError, ValueError, OverflowError):
                raise JudgmentError(f"The ranking names {item!r}, which is not a caption.") from None
            if isinstance(item, bool) or cid != item and str(cid) != str(item):
                raise JudgmentError(f"The ranking names {item!r}, which is not a caption.")
            cleaned.append(cid)
        tiers.append(cleaned)
        seen.extend(cleaned)
    allowed = set(caption_ids)
    foreign = [cid for cid in seen if cid not in allowed]
    if foreign:
        raise JudgmentError(
            f"The ranking names {name(foreign[0])}, which is not one of this task's captions."
        )
    repeated = sorted({cid for cid in seen if seen.count(cid) > 1})
    if repeated:
        raise JudgmentError(
            f"The ranking places {name(repeated[0])} more than once; give each caption one rank."
        )
    missing = [cid for cid in caption_ids if cid not in set(seen)]
    if missing:
        raise JudgmentError(f"The ranking leaves out {name(missing[0])}; rank every caption.")
    return tiers


def task_gold_set(*, task: Task, ranking: list[list[int]]) -> Task:
    """Mark a task gold with its known ranking. Gold tasks look like any other task to annotators."""
    caption_ids = task_caption_ids(task)
    try:
        tiers = ranking_normalise(ranking, caption_ids=caption_ids)
    except JudgmentError as error:
        raise ValidationError(f"Gold ranking for task {task.pk}: {error.text}") from None
    task.is_gold = True
    task.gold_ranking = tiers
    if task.status == TaskStatus.COMPLETE:
        task.status = TaskStatus.OPEN
    task.save(update_fields=["is_gold", "gold_ranking", "status"])
    return task


# --- the queue -----------------------------------------------------------------------------------


def assignments_expire(*, now=None) -> int:
    """Return every active assignment whose time ran out to the queue; returns how many expired.

    Concurrency: the UPDATE re-checks ``status = active`` under each row's lock, so an assignment that a
    racing submit has just marked ``submitted`` is not expired, and the claim counters drop exactly once.
    """
    now = now or timezone.now()
    # Outside a transaction: the common answer is "nothing expired", which then costs one indexed read
    # and no BEGIN/COMMIT round trips on the hot path of every claim.
    task_ids = list(
        Assignment.objects.filter(status=AssignmentStatus.ACTIVE, expires_at__lte=now)
        .order_by("id")
        .values_list("id", "task_id")[:5000]
    )
    if not task_ids:
        return 0
    with transaction.atomic():
        # Lock the rows and re-check them in one statement; ids that were submitted meanwhile drop out.
        expired = list(
            Assignment.objects.select_for_update()
            .filter(id__in=[a for a, _ in task_ids], status=AssignmentStatus.ACTIVE, expires_at__lte=now)
            .order_by("id")  # one lock order for every sweep: two sweeps never deadlock
            .values_list("id", "task_id")
        )
        if not expired:
            return 0
        Assignment.objects.filter(id__in=[a for a, _ in expired]).update(status=AssignmentStatus.EXPIRED)
        per_task: dict[int, int] = {}
        for _, task_id in expired:
            per_task[task_id] = per_task.get(task_id, 0) + 1
        for task_id, n in sorted(per_task.items()):
            Task.objects.filter(id=task_id).update(claim_count=F("claim_count") - n)
    return len(expired)


def _candidate(campaign: Campaign, user, *, gold: bool) -> Task | None:
    # No join to the campaign in these: ids of other campaigns' tasks in the NOT IN sets are harmless,
    # and PostgreSQL hashes each set once per query.
    seen = Assignment.objects.filter(user=user).exclude(status=AssignmentStatus.EXPIRED)
    judged = Judgment.objects.filter(user=user)
    tasks = (
        Task.objects.select_related("campaign")
        .filter(campaign=campaign, status=TaskStatus.OPEN, is_gold=gold)
        .exclude(id__in=seen.values("task_id"))
        .exclude(id__in=judged.values("task_id"))
    )
    if not gold:
        tasks = tasks.filter(judgment_count__lt=campaign.overlap - F("claim_count"))
    tasks = tasks.order_by("-priority", "id")
    # Walks task_queue_idx in priority order; SKIP LOCKED passes over tasks another claim is holding
    # (PostgreSQL), so concurrent annotators fan out instead of queueing on the top task. SQLite ignores
    # the lock clause: its IMMEDIATE transactions serialise the claims.
    task = tasks.select_for_update(skip_locked=True, of=("self",)).first()
    if task is None:
        # Everything claimable may merely be locked by claims in flight, which can still leave room:
        # wait for them. The lock re-checks the row's counters against the committed version, so the
        # overlap still holds. Only the end of the queue takes this slower path.
        task = tasks.select_for_update(of=("self",)).first()
    return task


def task_next(*, campaign: Campaign, user, rng: random.Random | None = None) -> Assignment | None:
    """The user's current assignment in the campaign, or a newly claimed one; None when the queue is empty."""
    now = timezone.now()
    assignments_expire(now=now)
    with transaction.atomic():
        # One claim per user at a time: a double click must not hold two tasks.
        list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))
        current = (
            Assignment.objects.filter(
                user=user, task__campaign=campaign, status=AssignmentStatus.ACTIVE, expires_at__gt=now
            )
            .select_related("task")
            .order_by("created_at")
            .first()
        )
        if current:
            return current
        if not campaign.is_active:
            return None
        want_gold = (rng or random).random() < campaign.gold_rate
        task = _candidate(campaign, user, gold=want_gold) or _candidate(campaign, user, gold=not want_gold)
        if task is None:
            return None
        expires = now + timedelta(minutes=campaign.assignment_minutes)
        # One upsert: a user who let this task expire earlier gets the unique (task, user) row back.
        (assignment,) = Assignment.objects.bulk_create(
            [Assignment(task=task, user=user, created_at=now, expires_at=expires)],
            update_conflicts=True,
            unique_fields=["task", "user"],
            update_fields=["status", "created_at", "expires_at", "skip_reason"],
        )
        Task.objects.filter(id=task.id).update(claim_count=F("claim_count") + 1)
        assignment.task = task
        return assignment


def assignment_skip(*, user, task: Task, reason: str) -> Assignment:
    reason = (reason or "").strip()
    if not reason:
        raise JudgmentError("Say why you skip this task (pick a reason).")
    with transaction.atomic():
        assignment = Assignment.objects.select_for_update().filter(task=task, user=user).first()
        if assignment is None or assignment.status != AssignmentStatus.ACTIVE:
            raise JudgmentError(
                "You do not hold this task any more, so there is nothing to skip.", status=409
            )
        assignment.status = AssignmentStatus.SKIPPED
        assignment.skip_reason = reason[:255]
        assignment.save(update_fields=["status", "skip_reason"])
        Task.objects.filter(id=task.id).update(claim_count=F("claim_count") - 1)
    return assignment


# --- judgments -----------------------------------------------------------------------------------


def _ratings_validate(
    ratings, *, caption_ids: list[int], criteria: list[dict], captions: dict[int, str]
) -> dict:
    def name(cid: int) -> str:
        text = captions.get(cid, "")
        return f"“{text[:60]}{'…' if len(text) > 60 else ''}”" if text else f"caption {cid}"

    if not isinstance(ratings, dict):
        raise JudgmentError("The ratings are malformed; rate every caption on every criterion.")
    allowed = {str(cid) for cid in caption_ids}
    for key in ratings:
        if str(key) not in allowed:
            raise JudgmentError(f"The ratings name caption {key}, which is not one of this task's captions.")
    cleaned: dict[str, dict[str, int]] = {}
    labels = {c["key"]: c["label"] for c in criteria}
    for cid in caption_ids:
        given = ratings.get(str(cid), ratings.get(cid))
        if not isinstance(given, dict) or not given:
            raise JudgmentError(f"Rate {name(cid)}: it has no ratings yet.")
        unknown = set(given) - set(labels)
        if unknown:
            raise JudgmentError(f"“{sorted(unknown)[0]}” is not a criterion of this campaign.")
        row = {}
        for key, label in labels.items():
            value = given.get(key)
            if value in (None, ""):
                raise JudgmentError(f"Rate {label} for {name(cid)}; every criterion needs a rating.")
            try:
                number = int(value)
            except (TypeError, ValueError, OverflowError):
                raise JudgmentError(f"{label} for {name(cid)} must be a whole number from 1 to 5.") from None
            if (
                isinstance(value, bool)
                or str(number) != str(value).strip()
                or not RATING_MIN <= number <= RATING_MAX
            ):
                raise JudgmentError(f"{label} for {name(cid)} must be from 1 to 5, not {value}.")
            row[key] = number
        cleaned[str(cid)] = row
    return cleaned


def _judgment_replay(*, client_key: uuid.UUID, user, task: Task) -> Judgment | None:
    stored = Judgment.objects.filter(client_key=client_key).first()
    if stored is None:
        # The key saved a version that has since been corrected: the submit happened; answer with the
        # judgment as it is now.
        revision = JudgmentRevision.objects.filter(client_key=client_key).select_related("judgment").first()
        stored = revision.judgment if revision else None
    if stored is None:
        return None
    if stored.user_id != user.pk or stored.task_id != task.pk:
        raise JudgmentError(
            "This submission key was already used for a different task. Reload the page and try again.",
            status=409,
        )
    return stored


def _client_key(client_key) -> uuid.UUID:
    try:
        return client_key if isinstance(client_key, uuid.UUID) else uuid.UUID(str(client_key))
    except (TypeError, ValueError, OverflowError):
        raise JudgmentError(
            "The form is missing its submission key. Reload the page and try again."
        ) from None


def ranking_from_ratings(ratings: dict, *, caption_ids: list[int]) -> list[list[int]]:
    """Tiers, best first, by each caption's mean rating; equal means are ties.

    ``ratings`` must be validated (every caption rated on every criterion), so each caption has the same
    number of ratings and their sums order exactly like their means, without float comparisons.
    """
    sums = {cid: sum(ratings[str(cid)].values()) for cid in caption_ids}
    tiers: list[list[int]] = []
    for total in sorted(set(sums.values()), reverse=True):
        tiers.append(sorted(cid for cid, s in sums.items() if s == total))
    return tiers


def _answer_clean(
    *, ranking, ratings, ranking_basis: str, caption_ids: list[int], criteria: list[dict], texts: dict
) -> tuple[list[list[int]], dict]:
    """The ranking and ratings to store, or ``JudgmentError``: a ranking is derived from the ratings
    (``ratings``) or made by the annotator (``adjusted``, ``confirmed``); anything else is refused."""
    if ranking_basis not in RankingBasis.values:
        raise JudgmentError(NOT_RANKED)
    if ranking_basis == RankingBasis.RATINGS:
        cleaned = _ratings_validate(ratings, caption_ids=caption_ids, criteria=criteria, captions=texts)
        derived = ranking_from_ratings(cleaned, caption_ids=caption_ids)
        if ranking:
            # The page showed a ranking; it must be the one the ratings give, or what was stored would
            # differ from what the annotator saw.
            shown = ranking_normalise(ranking, caption_ids=caption_ids, captions=texts)
            if [sorted(t) for t in shown] != derived:
                raise JudgmentError(
                    "The ranking on the page no longer follows your ratings. Press r to rank by your "
                    "ratings again, or move a caption to make the order your own, then submit."
                )
        return derived, cleaned
    tiers = ranking_normalise(ranking, caption_ids=caption_ids, captions=texts)
    cleaned = _ratings_validate(ratings, caption_ids=caption_ids, criteria=criteria, captions=texts)
    return tiers, cleaned


def _duration(duration_ms, fallback_ms: int) -> int:
    try:
        duration = max(0, min(int(duration_ms or 0), 2**31 - 1))
    except (TypeError, ValueError, OverflowError):
        duration = 0
    return duration or max(0, fallback_ms)


def judgment_submit(
    *,
    user,
    task: Task,
    ranking,
    ratings,
    client_key,
    duration_ms: int = 0,
    ranking_basis: str = RankingBasis.CONFIRMED,
) -> Judgment:
    """Store one annotator's ranking and ratings of a task they hold.

    ``ranking_basis`` says how the ranking was made: ``ratings`` derives it from the ratings (a ranking
    sent along must match), ``adjusted``/``confirmed`` take ``ranking`` as the annotator's own. The web
    form passes what the annotator did; callers that send an explicit ranking (the API, the simulated
    annotators) keep the default.

    Idempotent on ``client_key``: a repeated submit returns the stored judgment unchanged.
    """
    key = _client_key(client_key)
    campaign = task.campaign
    caption_rows = list(
        TaskCaption.objects.filter(task=task).order_by("position").values_list("caption_id", "caption__text")
    )
    caption_ids = [cid for cid, _ in caption_rows]
    texts = dict(caption_rows)
    now = timezone.now()
    try:
        with transaction.atomic():
            assignment = Assignment.objects.select_for_update().filter(task=task, user=user).first()
            if assignment is None:
                held_by_others = Assignment.objects.filter(task=task).exclude(user=user).exists()
                raise JudgmentError(
                    "This task is assigned to another annotator, not to you. Open your next task from the queue."
                    if held_by_others
                    else "You have no assignment for this task. Open your next task from the queue.",
                    status=403,
                )
            if assignment.status == AssignmentStatus.SUBMITTED:
                replay = _judgment_replay(client_key=key, user=user, task=task)
                if replay:
                    return replay
                raise JudgmentError("You have already submitted a judgment for this task.", status=409)
            if assignment.status == AssignmentStatus.SKIPPED:
                raise JudgmentError("You skipped this task, so it can no longer be submitted.", status=409)
            if assignment.status == AssignmentStatus.EXPIRED or assignment.expires_at <= now:
                raise JudgmentError(
                    f"Your time on this task ran out (tasks are held for {campaign.assignment_minutes} minutes) "
                    "and it went back to the queue. Your answer was not saved; open the next task.",
                    status=410,
                )
            tiers, cleaned = _answer_clean(
                ranking=ranking,
                ratings=ratings,
                ranking_basis=ranking_basis,
                caption_ids=caption_ids,
                criteria=campaign.criteria,
                texts=texts,
            )
            duration = _duration(duration_ms, int((now - assignment.created_at).total_seconds() * 1000))
            judgment = Judgment.objects.create(
                task=task,
                user=user,
                assignment=assignment,
                ranking=tiers,
                ratings=cleaned,
                ranking_basis=ranking_basis,
                duration_ms=duration,
                client_key=key,
                created_at=now,
            )
            assignment.status = AssignmentStatus.SUBMITTED
            assignment.save(update_fields=["status"])
            # One UPDATE: counters and completion move together under the row lock.
            Task.objects.filter(id=task.id).update(
                judgment_count=F("judgment_count") + 1,
                claim_count=F("claim_count") - 1,
                status=Case(
                    When(
                        is_gold=False,
                        status=TaskStatus.OPEN,
                        judgment_count__gte=campaign.overlap - 1,
                        then=Value(TaskStatus.COMPLETE),
                    ),
                    default=F("status"),
                ),
            )
    except IntegrityError:
        # A concurrent submit with the same key won the race; answer with its judgment.
        replay = _judgment_replay(client_key=key, user=user, task=task)
        if replay:
            return replay
        raise JudgmentError("You have already submitted a judgment for this task.", status=409) from None
    return judgment


def judgment_revise(
    *, judgment: Judgment, user, ranking, ratings, client_key, ranking_basis: str
) -> Judgment:
    """Correct one of the user's latest judgments: the current version is kept as a ``JudgmentRevision``
    and the judgment row becomes the new version, so every reader sees only the latest.

    Idempotent on ``client_key``: the same correction sent twice is saved once.
    """
    key = _client_key(client_key)
    task = judgment.task
    caption_rows = list(
        TaskCaption.objects.filter(task=task).order_by("position").values_list("caption_id", "caption__text")
    )
    caption_ids = [cid for cid, _ in caption_rows]
    now = timezone.now()
    with transaction.atomic():
        current = Judgment.objects.select_for_update().filter(pk=judgment.pk).first()
        if current is None or current.user_id != user.pk:
            raise JudgmentError("This judgment is not yours to correct.", status=403)
        if current.client_key == key or JudgmentRevision.objects.filter(client_key=key).exists():
            return current  # a retried correction: already saved
        if current.pk not in {j.pk for j in judgments_revisable(campaign=task.campaign, user=user)}:
            raise JudgmentError(
                f"You can correct only your last {revise_limit()} judgments of this campaign; this one is "
                "older and may already be in a trained model.",
                status=409,
            )
        tiers, cleaned = _answer_clean(
            ranking=ranking,
            ratings=ratings,
            ranking_basis=ranking_basis,
            caption_ids=caption_ids,
            criteria=task.campaign.criteria,
            texts=dict(caption_rows),
        )
        JudgmentRevision.objects.create(
            judgment=current,
            version=current.version,
            ranking=current.ranking,
            ratings=current.ratings,
            ranking_basis=current.ranking_basis,
            duration_ms=current.duration_ms,
            client_key=current.client_key,
            saved_at=current.revised_at or current.created_at,
            replaced_at=now,
        )
        current.ranking, current.ratings, current.ranking_basis = tiers, cleaned, ranking_basis
        current.client_key, current.version, current.revised_at = key, current.version + 1, now
        # The time spent on the task stays the first pass's: the median-time flag measures that.
        current.save(
            update_fields=["ranking", "ratings", "ranking_basis", "client_key", "version", "revised_at"]
        )
    return current


def ranking_from_tier_numbers(tier_numbers: dict[int, int | None]) -> list[list[int]]:
    """Tiers from a rank number per caption (the no-JavaScript form): {7: 1, 9: 2, 3: 2} -> [[7], [3, 9]].

    Numbers need not be consecutive; equal numbers are ties. A caption without a number is left out, which
    the validation then reports as "leaves out".
    """
    by_rank: dict[int, list[int]] = {}
    for cid, rank in tier_numbers.items():
        if rank is None:
            continue
        by_rank.setdefault(rank, []).append(cid)
    return [sorted(by_rank[rank]) for rank in sorted(by_rank)]


def task_priorities_set(*, priorities: dict[int, float]) -> int:
    """Set queue priorities (active learning); returns how many tasks were updated."""
    tasks = [Task(id=tid, priority=float(p)) for tid, p in priorities.items()]
    Task.objects.bulk_update(tasks, ["priority"], batch_size=5000)
    return len(tasks)


__all__ = [
    "JudgmentError",
    "assignment_skip",
    "assignments_expire",
    "campaign_create",
    "campaign_task_for_rewrite",
    "campaign_tasks_build",
    "judgment_revise",
    "judgment_submit",
    "ranking_from_ratings",
    "ranking_from_tier_numbers",
    "ranking_normalise",
    "task_gold_set",
    "task_next",
    "task_priorities_set",
]
