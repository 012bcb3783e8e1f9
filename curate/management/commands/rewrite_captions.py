"""Rewrite instead of drop: ``manage.py rewrite_captions --scorer vlm:<dir> --below itm=50 [--limit N]
[--campaign NAME] [--sync]``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotate.models import Campaign
from curate.model_captions import rewrite_run_execute, rewrite_run_start


class Command(BaseCommand):
    help = (
        "Ask a multimodal judge to rewrite the captions it scored below a bar (AITQE): each rewrite is a "
        "new caption (source model, parent = the original), judged and scored; with --campaign, original "
        "and rewrite go to annotators side by side."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--scorer", required=True, help="The judge, vlm:<local dir> (it must have judged the band)."
        )
        parser.add_argument(
            "--below",
            action="append",
            required=True,
            metavar="METRIC=VALUE",
            help="e.g. itm=50 (repeatable: any one below).",
        )
        parser.add_argument("--limit", type=int, default=500, help="At most this many rewrites, worst first.")
        parser.add_argument(
            "--campaign", default=None, help="Send each original and its rewrite to this campaign."
        )
        parser.add_argument("--sync", action="store_true", help="Run here instead of on the gpu workers.")

    def handle(self, *args, scorer, below, limit, campaign, sync, **options):
        bars = {}
        for item in below:
            key, _, value = item.partition("=")
            try:
                bars[key.strip().lower()] = float(value)
            except ValueError as exc:
                raise CommandError(f"--below {item!r}: expected METRIC=VALUE, e.g. itm=50.") from exc
        target = None
        if campaign:
            target = Campaign.objects.filter(name=campaign).first()
            if target is None:
                raise CommandError(f"No campaign named {campaign!r}.")
        try:
            run = rewrite_run_start(scorer=scorer, below=bars, limit=limit, campaign=target, enqueue=not sync)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not sync:
            self.stdout.write(f"Rewrite run {run.pk} queued for the gpu workers.")
            return
        run = rewrite_run_execute(run=run)
        counts = (run.summary or {}).get("counts", {})
        self.stdout.write(
            f"Rewrite run {run.pk} {run.status}: {counts.get('rewritten', 0)} rewrites of {run.total} candidates"
            + "".join(f", {k.replace('_', ' ')} {v}" for k, v in counts.items() if k != "rewritten")
        )
