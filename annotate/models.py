"""The people's side: campaigns, tasks, assignments, judgments, and the curators' flags and reviews.

Judgment format (shared with training and exports):
- ``ranking``: a list of tiers, best first; each tier is a list of caption ids that are tied,
  e.g. ``[[12], [7, 9], [3]]`` means 12 > 7 = 9 > 3. Every caption of the task appears exactly once.
- ``ratings``: ``{"<caption id>": {"<criterion key>": 1..5}}`` for every caption and criterion.
- ``ranking_basis``: how the ranking came about (``RankingBasis``); a ranking is always an act of the
  annotator, never the display order by default.

Versions: a ``Judgment`` row is always the annotator's latest version of their answer, so every reader
(agreement, exports, training) sees the latest version without filtering. Correcting a judgment copies
the version it replaces into ``JudgmentRevision`` first; nothing is lost.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from pool.models import Caption, Image

DEFAULT_CRITERIA = [
    {
        "key": "accuracy",
        "label": "Accuracy",
        "anchors": [
            "Mostly wrong about what is shown",
            "Several clear errors",
            "Roughly right, one clear error",
            "Right, minor imprecision",
            "Everything stated is correct",
        ],
    },
    {
        "key": "completeness",
        "label": "Completeness",
        "anchors": [
            "Misses the main subject",
            "Main subject only, vaguely",
            "Main subject and some details",
            "Most salient content covered",
            "All salient content covered",
        ],
    },
    {
        "key": "vividness",
        "label": "Vividness",
        "anchors": [
            "Generic, no descriptive words",
            "Bare description",
            "Some attributes (colour, size, style)",
            "Rich, specific attributes",
            "Vivid and precise, paints the picture",
        ],
    },
    {
        "key": "context_relevance",
        "label": "Context relevance",
        "anchors": [
            "Unrelated to the image",
            "Mostly off-topic",
            "Related but with irrelevant content",
            "Relevant, little noise",
            "Entirely about this image",
        ],
    },
]


def default_criteria() -> list[dict]:
    return [dict(c, anchors=list(c["anchors"])) for c in DEFAULT_CRITERIA]


class ConsensusMode(models.TextChoices):
    EACH = "each", "each annotator counts"
    CONSENSUS = "consensus", "merge annotators into a consensus"


class Campaign(models.Model):
    name = models.CharField(max_length=200, unique=True)
    instructions = models.TextField(blank=True, help_text="Markdown shown to annotators.")
    criteria = models.JSONField(default=default_criteria)
    captions_per_task = models.PositiveSmallIntegerField(default=4)
    overlap = models.PositiveSmallIntegerField(default=3, help_text="Annotators per task.")
    gold_rate = models.FloatField(default=0.05, help_text="Share of gold tasks mixed into the queue.")
    gold_accuracy_threshold = models.FloatField(default=0.6)
    assignment_minutes = models.PositiveIntegerField(
        default=30, help_text="An unsubmitted task returns after this."
    )
    consensus_mode = models.CharField(
        max_length=16, choices=ConsensusMode.choices, default=ConsensusMode.EACH
    )
    # Which pool pairs feed the campaign: {"image_sources": [...], "caption_sources": [...]}; empty = all.
    pool_filter = models.JSONField(default=dict, blank=True)
    # Active-learning mix, e.g. {"uncertainty": 0.4, "margin": 0.2, "disagreement": 0.1, "diversity": 0.1, "random": 0.2}.
    selection_mix = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name

    @property
    def criterion_keys(self) -> list[str]:
        return [c["key"] for c in self.criteria]


class TaskStatus(models.TextChoices):
    OPEN = "open", "open"
    COMPLETE = "complete", "complete"
    RETIRED = "retired", "retired"


class Task(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="tasks")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="tasks")
    captions = models.ManyToManyField(Caption, through="TaskCaption", related_name="tasks")
    priority = models.FloatField(default=0.0)
    is_gold = models.BooleanField(default=False)
    gold_ranking = models.JSONField(null=True, blank=True, help_text="Known ranking (tiers of caption ids).")
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.OPEN)
    # Denormalised so the queue never counts judgments per request.
    judgment_count = models.PositiveIntegerField(default=0)
    # Active (unsubmitted, not yet expired) assignments, also denormalised. It lives on the task row so
    # the claim's row lock re-checks "judgments + holders < overlap" against the latest committed
    # version: a count in a subquery would read a stale snapshot and let two claims over-fill a task.
    claim_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["campaign", "status", "-priority", "id"], name="task_queue_idx"),
            # "Tasks left in the queue" after every submit counts open tasks with room: index-only here
            # (PostgreSQL; other databases build it without the included columns).
            models.Index(
                fields=["campaign", "status", "is_gold"],
                include=["judgment_count", "claim_count"],
                name="task_open_slots_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Task {self.pk}"


class TaskCaption(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="task_captions")
    caption = models.ForeignKey(Caption, on_delete=models.CASCADE, related_name="task_links")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "caption"], name="task_caption_unique")]
        ordering = ["position"]


class AssignmentStatus(models.TextChoices):
    ACTIVE = "active", "active"
    SUBMITTED = "submitted", "submitted"
    EXPIRED = "expired", "expired"
    SKIPPED = "skipped", "skipped"


class Assignment(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    status = models.CharField(
        max_length=16, choices=AssignmentStatus.choices, default=AssignmentStatus.ACTIVE
    )
    skip_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            # One user sees a task at most once; skipping also takes it out of their queue.
            models.UniqueConstraint(fields=["task", "user"], name="assignment_unique_per_user"),
        ]
        indexes = [
            models.Index(fields=["task", "status", "expires_at"]),
            # Lazy expiry scans only the active assignments that have run out.
            models.Index(fields=["status", "expires_at"], name="assignment_expiry_idx"),
            # The claim's "tasks this user has seen" set and "current assignment" lookup, index-only.
            models.Index(fields=["user", "status", "task"], name="assignment_user_seen_idx"),
        ]


class RankingBasis(models.TextChoices):
    RATINGS = "ratings", "derived from the annotator's ratings"
    ADJUSTED = "adjusted", "arranged by the annotator"
    CONFIRMED = "confirmed", "entered by the annotator (form or API)"


class Judgment(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="judgments")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="judgments")
    assignment = models.OneToOneField(Assignment, null=True, blank=True, on_delete=models.SET_NULL)
    ranking = models.JSONField()
    ratings = models.JSONField()
    duration_ms = models.PositiveIntegerField(default=0)
    client_key = models.UUIDField(
        unique=True, help_text="Client-generated; makes a repeated submit idempotent."
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Empty for judgments stored before the basis was recorded (their ranking may be the display order).
    ranking_basis = models.CharField(max_length=16, choices=RankingBasis.choices, blank=True, default="")
    version = models.PositiveIntegerField(default=1)
    revised_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "user"], name="judgment_unique_per_user")]
        # The claim's "tasks this user has judged" set, read index-only (the unique index leads with task).
        indexes = [models.Index(fields=["user", "task"], name="judgment_user_task_idx")]


class JudgmentRevision(models.Model):
    """An earlier version of a judgment, kept when the annotator corrected it."""

    judgment = models.ForeignKey(Judgment, on_delete=models.CASCADE, related_name="revisions")
    version = models.PositiveIntegerField()
    ranking = models.JSONField()
    ratings = models.JSONField()
    ranking_basis = models.CharField(max_length=16, choices=RankingBasis.choices, blank=True, default="")
    duration_ms = models.PositiveIntegerField(default=0)
    # The key that saved this version: a late retry of that submit finds it here and changes nothing.
    client_key = models.UUIDField(unique=True)
    saved_at = models.DateTimeField(help_text="When this version was saved.")
    replaced_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["judgment", "version"], name="judgment_revision_unique_version")
        ]
        ordering = ["judgment", "version"]
