"""The reward model registry and its training runs. Django side only; the ML code is plain PyTorch."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from annotate.models import Campaign
from pool.models import Run


class ModelStatus(models.TextChoices):
    CANDIDATE = "candidate", "candidate"
    ACTIVE = "active", "active"
    RETIRED = "retired", "retired"


class RewardModel(models.Model):
    version = models.PositiveIntegerField(unique=True)
    encoder = models.CharField(max_length=255)
    # The encoder weights the heads were trained on (their features): scoring refuses other weights.
    encoder_fingerprint = models.CharField(max_length=64, blank=True, default="")
    campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.SET_NULL)
    checkpoint = models.CharField(max_length=1024, help_text="Path of the checkpoint file.")
    checkpoint_sha256 = models.CharField(max_length=64)
    config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict, help_text="Evaluation report on the held-out judgments.")
    n_judgments = models.PositiveIntegerField(default=0)
    n_pairs = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=ModelStatus.choices, default=ModelStatus.CANDIDATE)
    created_at = models.DateTimeField(default=timezone.now)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            # At most one active model per encoder: the gate swaps them in one transaction.
            models.UniqueConstraint(
                fields=["encoder"], condition=models.Q(status="active"), name="one_active_model_per_encoder"
            ),
        ]

    def __str__(self) -> str:
        return f"Reward model v{self.version} ({self.status})"


class ModelEvent(models.Model):
    """Audit log of the registry: trained, promoted, refused by the gate, rolled back, retired."""

    model = models.ForeignKey(RewardModel, on_delete=models.CASCADE, related_name="events")
    action = models.CharField(max_length=32)
    note = models.TextField(blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]


class TrainingRun(Run):
    campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.SET_NULL)
    encoder = models.CharField(max_length=255)
    model = models.ForeignKey(RewardModel, null=True, blank=True, on_delete=models.SET_NULL)

    def __str__(self) -> str:
        return f"Training {self.pk}"
