"""The pool: the shards it is indexed from, images and their captions. A caption is an image-text pair.

Images stay where the user keeps them: an image row records where its bytes are (a tar member's
range in a shard, a Parquet cell, or a file) and a caption row carries the source's identity of the
pair (uid, key, url, every other metadata column). Cleaning and curation mark rows (status, reason,
decision); nothing in the pool is ever deleted.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.db.models.functions import Left
from django.urls import reverse
from django.utils import timezone


def text_sha256(text: str) -> str:
    """Content key of a caption: embeddings are cached under it, so it hashes the exact text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pair_uid_derive(image_sha256: str, text_sha256: str) -> str:
    """The uid of a pair whose source gave none: 32 hex digits, the first 16 of the image's sha256 then
    the first 16 of the text's. Stable (same bytes and text, same uid) and DataComp-shaped."""
    return f"{image_sha256[:16]}{text_sha256[:16]}"


class ShardStatus(models.TextChoices):
    INDEXING = "indexing", "indexing"
    INDEXED = "indexed", "indexed"
    CHANGED = "changed", "changed since indexed"
    MISSING = "missing", "missing"
    FAILED = "failed", "could not be read"


class Shard(models.Model):
    """One unit of a source, indexed in place: a WebDataset ``.tar`` (with its ``.parquet``), a Parquet
    file, an img2dataset ``files`` folder, a table or a folder. The fingerprint (sizes, mtimes or ETags,
    the Parquet footer) tells an unchanged shard from one that changed or vanished since it was indexed.
    """

    uri = models.CharField(max_length=1024, unique=True)
    format = models.CharField(max_length=16)
    # The metadata file read beside the shard (img2dataset's NNNNN.parquet), when there is one.
    metadata_uri = models.CharField(max_length=1024, blank=True)
    # For Parquet shards holding the image bytes: the column they are in.
    image_column = models.CharField(max_length=200, blank=True)
    fingerprint = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=ShardStatus.choices, default=ShardStatus.INDEXING)
    status_reason = models.TextField(blank=True)
    samples = models.PositiveBigIntegerField(default=0, help_text="Pairs indexed from this shard.")
    import_run = models.ForeignKey(
        "ImportRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="shards"
    )
    indexed_at = models.DateTimeField(null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return self.uri


class ImageStatus(models.TextChoices):
    OK = "ok", "ok"
    DUPLICATE = "duplicate", "exact duplicate"
    NEAR_DUPLICATE = "near_duplicate", "near duplicate"
    LOW_RES = "low_res", "low resolution"
    REJECTED = "rejected", "rejected"
    # The bytes did not decode (truncated, corrupt) or are no longer the indexed ones: found when the
    # image is first fully decoded (``pool.inspection``), since indexing in place reads headers only.
    UNREADABLE = "unreadable", "unreadable"


class Image(models.Model):
    # Of the exact bytes where the image lives: the content key (duplicates, embedding cache) and the
    # check every read makes, so a shard rewritten in place is never read as the indexed image.
    # (Unique and indexed through Meta, not unique=True/db_index=True: on PostgreSQL those add a second,
    # pattern-matching index per hash column, which nothing queries and every insert pays for.)
    sha256 = models.CharField(max_length=64)
    # 64-bit perceptual hash as 16 hex digits; near duplicates are within a small Hamming radius.
    # Empty until the image is first fully decoded (``inspected_at``).
    phash = models.CharField(max_length=16, blank=True)
    # From the image header (read at indexing), confirmed by the full decode.
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=16, blank=True)
    bytes = models.PositiveBigIntegerField(default=0)
    inspected_at = models.DateTimeField(null=True, blank=True)
    # Where the bytes are, one of: a range of a shard (a tar member's data), a Parquet cell of a shard
    # (row group, row, the shard's image column), a file of its own (``uri``), or, for images imported
    # before pools were indexed in place, a copy under MEDIA_ROOT (``file``).
    # Indexed through Meta (image_shard_idx, covering status and id), not db_index.
    shard = models.ForeignKey(
        Shard, null=True, blank=True, on_delete=models.PROTECT, related_name="images", db_index=False
    )
    uri = models.CharField(max_length=1024, blank=True, help_text="The image file, when it is one.")
    offset = models.PositiveBigIntegerField(null=True, blank=True)
    length = models.PositiveBigIntegerField(null=True, blank=True)
    row_group = models.PositiveIntegerField(null=True, blank=True)
    row = models.PositiveIntegerField(null=True, blank=True)
    # Path relative to MEDIA_ROOT of a content-addressed copy (images/ab/abcdef....jpg): images imported
    # before pools were indexed in place. Empty for images read where they live.
    file = models.CharField(max_length=255, blank=True)
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
        constraints = [models.UniqueConstraint(fields=["sha256"], name="image_sha256_unique")]
        indexes = [
            models.Index(fields=["status"]),
            models.Index(fields=["source"]),
            models.Index(fields=["phash"], name="image_phash"),
            # A shard's usable images from the index alone (PostgreSQL; the bulk rescore asks per shard).
            models.Index(fields=["shard"], include=["status", "id"], name="image_shard_idx"),
        ]

    def __str__(self) -> str:
        return f"Image {self.pk} ({self.sha256[:10]})"

    @property
    def url(self) -> str:
        """Where a page loads the picture from: the media copy when there is one, else the view that
        reads the bytes in place."""
        if self.file:
            return f"{settings.MEDIA_URL}{self.file}"
        return reverse("pool:image_file", args=[self.pk])

    @property
    def thumb_url(self) -> str:
        return reverse("pool:image_thumb", args=[self.pk])

    @property
    def path(self):
        """The local file of a media copy (legacy imports); None for an image read in place."""
        return settings.MEDIA_ROOT / self.file if self.file else None

    @property
    def min_side(self) -> int:
        return min(self.width, self.height)


URL_INDEX_CHARS = 300


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
    # Indexed through Meta (caption_image_idx, covering status and id), not db_index.
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="captions", db_index=False)
    text = models.TextField()
    text_sha256 = models.CharField(max_length=64)
    source = models.CharField(max_length=16, choices=CaptionSource.choices, default=CaptionSource.ALT)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rewrites"
    )
    status = models.CharField(max_length=16, choices=CaptionStatus.choices, default=CaptionStatus.OK)
    status_reason = models.CharField(max_length=255, blank=True)
    # Curator decision overrides filter rules; decision_version guards against silent overwrites.
    decision = models.CharField(max_length=16, choices=CuratorDecision.choices, default="", blank=True)
    decision_version = models.PositiveIntegerField(default=0)
    # The pair's identity everywhere (pages, API, exports, DataComp subsets): the source's uid (32 hex
    # digits, as img2dataset and DataComp write it) or, when the source has none, ``pair_uid_derive``
    # (``uid_derived``). Unique: importing the same pair twice adds nothing. Null only for rows written
    # in bulk by code that predates it; readers fall back to the derived value.
    uid = models.CharField(max_length=32, null=True, blank=True)
    uid_derived = models.BooleanField(default=False)
    # The source's own description of the sample: its key, its URL, and every other metadata column
    # (original_width/height, the source's sha256, status, exif, extra columns) in ``meta``.
    key = models.CharField(max_length=255, blank=True)
    url = models.TextField(blank=True)
    meta = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["uid"], name="caption_uid_unique")]
        indexes = [
            models.Index(fields=["status"]),
            models.Index(fields=["decision"]),
            models.Index(fields=["text_sha256"], name="caption_text_sha256"),
            models.Index(fields=["key"], name="caption_key"),
            # URLs can be longer than a B-tree entry may be: the index holds their head, and
            # ``selectors.captions_with_url`` filters on the head and then the whole URL.
            models.Index(Left("url", URL_INDEX_CHARS), name="caption_url_head"),
            # Curator rewrites are few; a filter run reads them all (candidates in their own right)
            # without scanning the pool's captions.
            models.Index(fields=["id"], condition=models.Q(source="rewrite"), name="caption_rewrite_idx"),
            # An image's usable captions from the index alone (PostgreSQL; with image_shard_idx, a
            # shard's usable pairs without reading the rows: the bulk rescore asks per shard).
            models.Index(fields=["image"], include=["status", "id"], name="caption_image_idx"),
        ]

    def __str__(self) -> str:
        return self.text[:80]

    def save(self, *args, **kwargs):
        # Captions made one at a time (rewrites, people's captions) get the derived uid, which also
        # keeps one image from holding the same text twice.
        if not self.uid and self.text_sha256 and self.image_id:
            self.uid = pair_uid_derive(self.image.sha256, self.text_sha256)
            self.uid_derived = True
        super().save(*args, **kwargs)

    @property
    def pair_uid(self) -> str:
        return self.uid or pair_uid_derive(self.image.sha256, self.text_sha256)

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
    """One import (an index in place) of shards, a Parquet set, a folder or a table into the pool.

    ``summary["problems"]`` lists what makes a finished import not a clean success (too many rows
    skipped, shards changed or missing or unreadable); such a run is "finished with problems".
    """

    source = models.CharField(max_length=1024)
    format = models.CharField(max_length=16)

    def __str__(self) -> str:
        return f"Import {self.pk} of {self.source}"

    @property
    def problems(self) -> list[str]:
        return list((self.summary or {}).get("problems") or [])

    @property
    def outcome(self) -> str:
        """``succeeded``, ``finished_with_problems``, or the status (queued, running, failed, ...)."""
        if self.status == RunStatus.SUCCEEDED and self.problems:
            return "finished_with_problems"
        return self.status

    def get_outcome_display(self) -> str:
        return (
            "finished with problems"
            if self.outcome == "finished_with_problems"
            else self.get_status_display()
        )


class CleaningRun(Run):
    def __str__(self) -> str:
        return f"Cleaning {self.pk}"
