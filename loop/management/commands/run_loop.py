"""Run the loop's chain by hand.

    python manage.py run_loop --campaign NAME [--encoder NAME] [--top-percent 30] [--sync]
    python manage.py run_loop --resume RUN_ID [--sync]

Without ``--sync`` the chain is queued for the workers (the same as the console's "retrain and filter
now"); with it, every step, including the pool's scoring, runs in this process.
Refused while another chain is queued or running.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from loop.runs import LoopBusy, LoopError
from loop.services import loop_resume, loop_run_inline, loop_start


class Command(BaseCommand):
    help = "Retrain, gate, rescore, refresh priorities and flags (and filter) now."

    def add_arguments(self, parser):
        parser.add_argument("--campaign", help="Campaign name.")
        parser.add_argument("--encoder", default=None, help="Encoder name (default: LOUPE_DEFAULT_ENCODER).")
        parser.add_argument("--top-percent", type=float, default=None, help="Also run a top-k%% filter.")
        parser.add_argument("--resume", type=int, default=None, help="Resume a failed or cancelled loop run.")
        parser.add_argument("--sync", action="store_true", help="Run every step here instead of on workers.")

    def handle(
        self, *args, campaign: str | None, encoder: str | None, top_percent, resume, sync: bool, **options
    ):
        from annotate.models import Campaign
        from loop.models import LoopRun

        if (campaign is None) == (resume is None):
            raise CommandError("Give either --campaign NAME (a new chain) or --resume RUN_ID.")
        try:
            if resume is not None:
                run = LoopRun.objects.filter(pk=resume).first()
                if run is None:
                    raise CommandError(f"No loop run {resume}.")
                run = loop_resume(run=run, enqueue=not sync)
            else:
                found = Campaign.objects.filter(name=campaign).first()
                if found is None:
                    raise CommandError(f"No campaign named {campaign!r}.")
                rule = {"top_percent": top_percent} if top_percent is not None else None
                run = loop_start(
                    campaign=found, trigger="manual", encoder=encoder, filter_rule=rule, enqueue=not sync
                )
            if sync:
                # Every step, the pool's scoring included, runs here one after another.
                run = loop_run_inline(run=run)
        except (LoopBusy, LoopError) as exc:
            raise CommandError(str(exc)) from exc
        run.refresh_from_db()
        if not sync:
            self.stdout.write(f"Loop run {run.pk} queued; follow it on /console/jobs/.")
            return
        self.stdout.write(run.log)
        if run.status == "failed":
            raise CommandError(f"Loop run {run.pk} failed: {run.error}")
        self.stdout.write(self.style.SUCCESS(f"Loop run {run.pk} {run.status} after step '{run.step}'."))
