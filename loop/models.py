"""The loop's runs: one row per pass of the chain retrain -> ... -> filter."""

from __future__ import annotations

from django.db import models

from annotate.models import Campaign
from pool.models import Run


class LoopRun(Run):
    """One pass of the loop: retrain -> evaluate -> gate -> rescore -> priorities -> flags.

    ``step`` records the last finished step, so a rerun resumes where a failure stopped it.
    """

    campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.SET_NULL)
    step = models.CharField(max_length=32, blank=True)
    trigger = models.CharField(max_length=16, default="manual")

    class Meta(Run.Meta):
        db_table = "training_looprun"  # the table's name from before the move to loop

    def __str__(self) -> str:
        return f"Loop {self.pk}"
