"""What people and models decide about the pool: flags, curator reviews, filter runs and exports.

These models moved here from ``annotate`` (flags, reviews) and ``scoring`` (filter runs, exports);
their tables keep the names they had, so the move changed no row (see the migrations).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from pool.models import Caption, Run


class FlagReason(models.TextChoices):
    LOW_REWARD = "low_reward", "low reward"
    DISAGREEMENT = "disagreement", "reward and CLIPScore disagree"
    NEAR_DUPLICATE = "near_duplicate", "near-duplicate cluster"
    LOW_AGREEMENT = "low_agreement", "annotators disagree"
    TRUNCATED = "truncated", "caption truncated by the encoder"
    LOW_JUDGE = "low_judge", "the multimodal judge says the caption does not match"


class Flag(models.Model):
    caption = models.ForeignKey(Caption, on_delete=models.CASCADE, related_name="flags")
    reason = models.CharField(max_length=32, choices=FlagReason.choices)
    details = models.JSONField(default=dict, blank=True, help_text="The scores behind the flag.")
    is_open = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "annotate_flag"  # the table's name from before the move to curate
        constraints = [models.UniqueConstraint(fields=["caption", "reason"], name="flag_unique_reason")]
        indexes = [models.Index(fields=["is_open", "reason"], name="annotate_fl_is_open_31c340_idx")]


class Review(models.Model):
    """One curator decision: the audit trail. The current decision is mirrored on the caption.

    An undo is a review too (``decision="undo"``, ``undoes`` the review it takes back): nothing in the
    trail is ever deleted or edited.
    """

    UNDO = "undo"

    caption = models.ForeignKey(Caption, on_delete=models.CASCADE, related_name="reviews")
    decision = models.CharField(max_length=16)
    undoes = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="undone_by"
    )
    note = models.TextField(blank=True)
    rewritten_caption = models.ForeignKey(
        Caption, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "annotate_review"


class FilterRun(Run):
    """A cut of the pool: the rule, the model it used, and what it kept (a .npy of caption ids)."""

    encoder = models.CharField(max_length=255)
    # The scores the run was computed from: weights fingerprint and reward checkpoint sha256. Rescoring
    # with other weights adds rows under another fingerprint, so an export of this run reads these.
    encoder_fingerprint = models.CharField(max_length=64, blank=True, default="")
    reward_model_version = models.PositiveIntegerField(default=0)
    reward_checkpoint_sha256 = models.CharField(max_length=64, blank=True, default="")
    rule = models.JSONField(default=dict)
    considered = models.PositiveBigIntegerField(default=0)
    kept = models.PositiveBigIntegerField(default=0)
    kept_file = models.CharField(max_length=1024, blank=True)

    class Meta(Run.Meta):
        db_table = "scoring_filterrun"

    @property
    def compression_ratio(self) -> float | None:
        return self.considered / self.kept if self.kept else None

    def __str__(self) -> str:
        return f"Filter {self.pk}"


class Export(Run):
    class Kind(models.TextChoices):
        PARQUET = "parquet", "Parquet"
        WEBDATASET = "webdataset", "WebDataset shards"
        NPY = "npy", "DataComp uids (.npy)"
        JSONL = "jsonl", "JSONL"
        PREFERENCES = "preferences", "preference pairs (JSONL)"
        COCO_HF = "coco_hf", "COCO-HF judgments (JSON)"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    filter_run = models.ForeignKey(FilterRun, null=True, blank=True, on_delete=models.SET_NULL)
    path = models.CharField(max_length=1024)
    manifest = models.JSONField(default=dict, blank=True)

    class Meta(Run.Meta):
        db_table = "scoring_export"

    def __str__(self) -> str:
        return f"Export {self.pk} ({self.kind})"


class RewriteRun(Run):
    """AITQE's rewrite-instead-of-drop over a band of the pool: a multimodal judge rewrites the captions
    it scored below a bar; each rewrite is a new caption (source ``model``, parent = the original),
    judged by the same model, scored, and optionally ranked by annotators against its original."""

    scorer = models.CharField(max_length=255)
    scorer_fingerprint = models.CharField(max_length=64, blank=True)
    campaign = models.ForeignKey(
        "annotate.Campaign", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"Rewrite run {self.pk} ({self.scorer})"
