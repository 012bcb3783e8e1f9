"""The pool: images and their captions. A caption is an image-text pair.

Cleaning and curation mark rows (status, reason, decision); nothing in the pool is ever deleted.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.utils import timezone


def text_sha256(text: str) -> str:
    """Content key of a caption: embeddings are cached under it, so it hashes the exact text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ImageStatus(models.TextChoices):
    OK = "ok", "ok"
    DUPLICATE = "duplicate", "exact duplicate"
    NEAR_DUPLICATE = "near_duplicate", "near duplicate"
    LOW_RES = "low_res", "low resolution"
    REJECTED = "rejected", "rejected"


class Image(models.Model):
    sha256 = models.CharField(max_length=64, unique=True)
    # 64-bit perceptual hash as 16 hex digits; near duplicates are within a small Hamming radius.
    phash = models.CharField(max_length=16, db_index=True, blank=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=16, blank=True)
    bytes = models.PositiveBigIntegerField(default=0)
    # Path relative to MEDIA_ROOT of the content-addressed copy (images/ab/abcdef....jpg).
    file = models.CharField(max_length=255)
    source = models.CharField(max_length=255, blank=True, help_text="Import source (file or shard).")
    source_key = models.CharField(
        max_length=1024, blank=True, help_text="Key of the image inside its source."
    )
    status = models.CharField(max_length=16, choices=ImageStatus.choices, default=ImageStatus.OK)
    status_reason = models.CharField(max_length=255, blank=True)
    duplicate_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="duplicates"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["status"]), models.Index(fields=["source"])]

    def __str__(self) -> str:
        return f"Image {self.pk} ({self.sha256[:10]})"

    @property
    def url(self) -> str:
        return f"{settings.MEDIA_URL}{self.file}"

    @property
    def path(self):
        return settings.MEDIA_ROOT / self.file

    @property
    def min_side(self) -> int:
        return min(self.width, self.height)


class CaptionSource(models.TextChoices):
    ALT = "alt", "alt text"
    SYNTHETIC = "synthetic", "synthetic"
    MODEL = "model", "model generated"
    REWRITE = "rewrite", "curator rewrite"
    HUMAN = "human", "human written"


class CaptionStatus(models.TextChoices):
    OK = "ok", "ok"
    EMPTY = "empty", "empty"
    TRIVIAL = "trivial", "trivial"
    DUPLICATE = "duplicate", "duplicate caption"
    TOO_LONG = "too_long", "too long (capped)"
    REJECTED = "rejected", "rejected"


class CuratorDecision(models.TextChoices):
    NONE = "", "undecided"
    ACCEPT = "accept", "accept (always kept)"
    REJECT = "reject", "reject (always dropped)"
    REWRITE = "rewrite", "rewritten"


class Caption(models.Model):
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="captions")
    text = models.TextField()
    text_sha256 = models.CharField(max_length=64, db_index=True)
    source = models.CharField(max_length=16, choices=CaptionSource.choices, default=CaptionSource.ALT)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rewrites"
    )
    status = models.CharField(max_length=16, choices=CaptionStatus.choices, default=CaptionStatus.OK)
    status_reason = models.CharField(max_length=255, blank=True)
    # Curator decision overrides filter rules; decision_version guards against silent overwrites.
    decision = models.CharField(max_length=16, choices=CuratorDecision.choices, default="", blank=True)
    decision_version = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Importing the same pair twice adds nothing.
            models.UniqueConstraint(fields=["image", "text_sha256"], name="caption_unique_per_image"),
        ]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["decision"])]

    def __str__(self) -> str:
        return self.text[:80]

    @property
    def uid(self) -> str:
        """Stable pair id for exports (DataComp-style 128-bit hex)."""
        return f"{self.image.sha256[:16]}{self.text_sha256[:16]}"

    @property
    def is_usable(self) -> bool:
        return self.status == CaptionStatus.OK and self.image.status == ImageStatus.OK


class RunStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


class Run(models.Model):
    """Common shape of every long job (import, cleaning, scoring, training, filtering, export).

    Progress lives on the row (``done``/``total``) so pages can poll it; tasks check ``status`` before
    acting, which keeps them safe to run twice.
    """

    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    done = models.PositiveBigIntegerField(default=0)
    total = models.PositiveBigIntegerField(default=0)
    params = models.JSONField(default=dict, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    log = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set by the worker at progress points (``pool.run_health``). A running run whose worker stopped
    # beating (killed, machine lost; the filesystem broker never redelivers its message) is resumed by
    # beat's stale-run sweep; runs done in a command's own process have none and are never swept.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    stale_resumes = models.PositiveSmallIntegerField(
        default=0, help_text="How often the stale-run sweep resumed this run after its worker went silent."
    )

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else (100 if self.is_finished else 0)

    @property
    def is_finished(self) -> bool:
        return self.status in {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}


class ImportRun(Run):
    """One import of a folder, table file or WebDataset shard set into the pool."""

    source = models.CharField(max_length=1024)
    format = models.CharField(max_length=16)

    def __str__(self) -> str:
        return f"Import {self.pk} of {self.source}"


class CleaningRun(Run):
    def __str__(self) -> str:
        return f"Cleaning {self.pk}"
