"""The machines over the pool: scores per (caption, encoder, reward model), scoring runs, filter runs, exports.

``scoring`` never imports ``training``: a reward model is referred to by its integer version
(0 = no reward model, CLIPScore only).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from pool.models import Caption, Run


class Score(models.Model):
    # No index of its own: the unique (caption, encoder, fingerprint, version) index leads with it.
    caption = models.ForeignKey(Caption, on_delete=models.CASCADE, related_name="scores", db_index=False)
    encoder = models.CharField(max_length=255)
    # The weights behind the name (``scoring.encoder_names.encoder_fingerprint``): weights replaced at
    # the same path score into new rows, so filter runs made from the old scores keep them.
    encoder_fingerprint = models.CharField(max_length=64, blank=True, default="")
    reward_model_version = models.PositiveIntegerField(default=0)
    cosine = models.FloatField(null=True, blank=True)
    clipscore = models.FloatField(null=True, blank=True, help_text="2.5 * max(cos, 0), Hessel et al. 2021")
    reward = models.FloatField(null=True, blank=True)
    criteria = models.JSONField(null=True, blank=True, help_text="Predicted 1-5 score per criterion.")
    uncertainty = models.FloatField(null=True, blank=True, help_text="Spread of the reward ensemble.")
    truncated = models.BooleanField(default=False, help_text="Caption longer than the text tower's context.")
    error = models.CharField(max_length=500, blank=True, help_text="Why the pair could not be scored.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Chunks upsert on this key, so a retried chunk never doubles a score.
            # The reward checkpoint is named by its version: the registry never changes a version's
            # checkpoint (scoring refuses a file whose sha256 differs from the one recorded).
            models.UniqueConstraint(
                fields=["caption", "encoder", "encoder_fingerprint", "reward_model_version"],
                name="score_unique_per_weights",
            ),
        ]
        # Covering (PostgreSQL): a filter run reads one model's (caption, rank, cosine) from the index
        # alone, about a quarter of the bytes of the rows it would otherwise fetch (docs/scale.md).
        indexes = [
            models.Index(
                fields=["encoder", "encoder_fingerprint", "reward_model_version", "reward"],
                include=["caption", "cosine"],
                name="score_weights_reward_idx",
            ),
            models.Index(
                fields=["encoder", "encoder_fingerprint", "reward_model_version", "clipscore"],
                include=["caption", "cosine"],
                name="score_weights_clip_idx",
            ),
            # Few rows: a bulk rescore reads a shard's truncated captions from it, not from the rows.
            models.Index(fields=["caption"], condition=models.Q(truncated=True), name="score_truncated_idx"),
        ]


class VlmScore(models.Model):
    """MLM-Filter's four metrics (0-100) of one pair by one multimodal judge (``vlm:<dir>``).

    Keyed by the judge's weights fingerprint, not its name: replacing the weights at the same path
    makes new rows instead of overwriting what an older filter run used.
    """

    caption = models.ForeignKey(Caption, on_delete=models.CASCADE, related_name="vlm_scores")
    scorer = models.CharField(max_length=255)
    scorer_fingerprint = models.CharField(max_length=64)
    itm = models.FloatField(null=True, blank=True, help_text="Image-Text Matching, 0-100")
    odf = models.FloatField(null=True, blank=True, help_text="Object Detail Fulfillment, 0-100")
    ctq = models.FloatField(null=True, blank=True, help_text="Caption Text Quality, 0-100")
    su = models.FloatField(null=True, blank=True, help_text="Semantic Understanding, 0-100")
    truncated = models.BooleanField(default=False, help_text="Caption cut to fit the judge's context.")
    error = models.CharField(max_length=500, blank=True, help_text="Why the pair has no score.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["caption", "scorer_fingerprint"], name="vlm_score_unique_per_judge"
            )
        ]
        indexes = [
            models.Index(fields=["scorer_fingerprint", "itm"], name="vlm_score_itm_idx"),
            models.Index(fields=["scorer_fingerprint", "odf"], name="vlm_score_odf_idx"),
        ]


VLM_METRICS = ("itm", "odf", "ctq", "su")


class ScoringRun(Run):
    encoder = models.CharField(max_length=255)
    encoder_fingerprint = models.CharField(max_length=64, blank=True, default="")
    reward_model_version = models.PositiveIntegerField(default=0)
    reward_checkpoint_sha256 = models.CharField(max_length=64, blank=True, default="")
    chunk_size = models.PositiveIntegerField(default=2048)
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    failed_pairs = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"Scoring {self.pk} ({self.encoder})"


class ScoringChunk(models.Model):
    """One slice of a scoring run (captions with ids in [first_id, last_id]).

    ``done`` flips once, in the same transaction as the chunk's score upserts and the run's counters,
    so a chunk delivered twice (a worker killed after committing, before acknowledging) counts once.
    """

    run = models.ForeignKey(ScoringRun, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    first_id = models.PositiveBigIntegerField()
    last_id = models.PositiveBigIntegerField()
    pairs = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    done = models.BooleanField(default=False)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="scoring_chunk_unique_index")]

    def __str__(self) -> str:
        return f"Chunk {self.index} of scoring run {self.run_id}"


class ShardPassRun(Run):
    """One pass over the bytes of pool shards for one encoder identity (``scoring.shard_pass``): each
    image decoded once for validity, perceptual hash, size, embedding and CLIPScore.

    ``done``/``total`` count pairs (``total`` starts from the shards' indexed sample counts and is set
    right as each shard finishes); ``shards_done``/``shards_total`` count shards.
    """

    encoder = models.CharField(max_length=255)
    encoder_fingerprint = models.CharField(max_length=64, blank=True, default="")
    shards_total = models.PositiveIntegerField(default=0)
    shards_done = models.PositiveIntegerField(default=0)
    shards_failed = models.PositiveIntegerField(default=0, help_text="Shards that could not be read.")
    images_done = models.PositiveBigIntegerField(default=0)
    unreadable_images = models.PositiveBigIntegerField(default=0)
    failed_pairs = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"Shard pass {self.pk} ({self.encoder})"


class ShardPassShard(models.Model):
    """One pool shard of a shard pass. ``done`` flips once, in the transaction that writes the shard's
    Image rows and Score upserts and bumps the run's counters: a shard run twice counts once."""

    run = models.ForeignKey(ShardPassRun, on_delete=models.CASCADE, related_name="shards")
    shard = models.ForeignKey("pool.Shard", on_delete=models.CASCADE, related_name="+")
    # The shard's indexed sample count when the run was planned (the run's first ``total``).
    planned = models.PositiveBigIntegerField(default=0)
    done = models.BooleanField(default=False)
    pairs = models.PositiveIntegerField(default=0)
    images = models.PositiveIntegerField(default=0)
    unreadable = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0, help_text="Pairs whose image could not be read.")
    error = models.TextField(blank=True, help_text="Why the whole shard could not be read.")
    seconds = models.FloatField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "shard"]
        constraints = [models.UniqueConstraint(fields=["run", "shard"], name="shard_pass_shard_unique")]
        indexes = [models.Index(fields=["run", "done"], name="shard_pass_shard_run_done")]

    def __str__(self) -> str:
        return f"Shard {self.shard_id} of shard pass {self.run_id}"
