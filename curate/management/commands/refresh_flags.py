"""Recompute the curator flags for one scoring: ``manage.py refresh_flags --encoder E --reward-model-version V``."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from curate.flags import DEFAULT_AGREEMENT_THRESHOLD, DEFAULT_DISAGREEMENT_THRESHOLD, flags_refresh
from curate.selectors import score_context_default


class Command(BaseCommand):
    help = "Refresh flags (low reward, disagreement, near duplicates, low agreement, truncated)."

    def add_arguments(self, parser):
        parser.add_argument("--encoder", default=None, help="Encoder name (default: the configured one).")
        parser.add_argument(
            "--reward-model-version", type=int, default=None, help="Reward model version (default: active)."
        )
        parser.add_argument("--low-reward-share", type=float, default=0.1)
        parser.add_argument("--disagreement-threshold", type=float, default=DEFAULT_DISAGREEMENT_THRESHOLD)
        parser.add_argument("--agreement-threshold", type=float, default=DEFAULT_AGREEMENT_THRESHOLD)

    def handle(self, *args, **options):
        context = score_context_default(
            encoder=options["encoder"], reward_model_version=options["reward_model_version"]
        )
        counts = flags_refresh(
            encoder=context.encoder,
            reward_model_version=context.reward_model_version,
            low_reward_share=options["low_reward_share"],
            disagreement_threshold=options["disagreement_threshold"],
            agreement_threshold=options["agreement_threshold"],
        )
        self.stdout.write(f"Flags for {context.encoder} v{context.reward_model_version}:")
        for reason, count in counts.items():
            self.stdout.write(f"  {reason:15s} open {count['open']:>8}  closed {count['closed']:>8}")
