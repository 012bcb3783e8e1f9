"""One pass over the bytes of the pool's shards: ``manage.py shard_pass [--encoder NAME] [--shards 1,2]
[--sync | --no-wait | --resume RUN]``.

Each shard's images are decoded once for validity, perceptual hash, size, embeddings (cache and by-shard
feature files) and CLIPScore (``scoring.shard_pass``). Without --sync the run is queued for the gpu
workers (one task per shard) and this command follows its progress; Ctrl-C stops following, not the run.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from pool.models import RunStatus
from pool.progress import ProgressBar
from scoring import shard_pass
from scoring.management.gpu_workers import gpu_worker_check, run_follow
from scoring.models import ShardPassRun


class Command(BaseCommand):
    help = (
        "Decode every image of the pool's indexed shards once: validity, perceptual hash and size for "
        "cleaning, embeddings into the cache and the by-shard feature files, and CLIPScore for every pair."
    )

    def add_arguments(self, parser):
        parser.add_argument("--encoder", default=None, help="Encoder name (default: LOUPE_DEFAULT_ENCODER).")
        parser.add_argument(
            "--shards",
            default=None,
            metavar="IDS",
            help="Comma-separated pool shard ids (default: every indexed shard). Rerunning a shard "
            "replaces its results.",
        )
        parser.add_argument("--sync", action="store_true", help="Run in this process instead of the workers.")
        parser.add_argument(
            "--resume", type=int, metavar="RUN", help="Re-queue the unfinished shards of RUN."
        )
        parser.add_argument("--no-wait", action="store_true", help="Queue the run and return at once.")

    def handle(self, *args, encoder, shards, sync, resume, no_wait, **options):
        if resume is not None:
            try:
                run = ShardPassRun.objects.get(pk=resume)
            except ShardPassRun.DoesNotExist as exc:
                raise CommandError(f"No shard pass {resume}.") from exc
            pending = shard_pass.shard_pass_resume(run=run)
            self.stdout.write(f"Shard pass {run.pk}: {len(pending)} unfinished shards queued again.")
            if not no_wait:
                self._follow(run)
            return
        shard_ids = None
        if shards:
            try:
                shard_ids = [int(s) for s in shards.split(",") if s.strip()]
            except ValueError as exc:
                raise CommandError(f"--shards takes shard ids separated by commas, not {shards!r}.") from exc
        if not sync:
            self._check_a_worker_listens(queue_only=no_wait)
        try:
            if sync:
                from scoring.encoders import EncoderError, encoder_load

                try:
                    encoder_load(encoder or _default_encoder())
                except EncoderError as exc:
                    raise CommandError(str(exc)) from exc
            run = shard_pass.shard_pass_start(encoder=encoder, shard_ids=shard_ids, enqueue=not sync)
        except shard_pass.ShardPassError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Shard pass {run.pk}: {run.encoder} over {run.shards_total} shards ({run.total} pairs indexed)"
        )
        if sync:
            bar = ProgressBar(f"Shard pass {run.pk}", "pair", stream=self.stderr._out)
            run = shard_pass.shard_pass_sync(
                run=run, progress=lambda current: bar(current.done, current.total)
            )
            bar.close()
            self._report(run)
        elif not no_wait:
            self._follow(run)

    def _check_a_worker_listens(self, *, queue_only: bool) -> None:
        gpu_worker_check(self, queue_only=queue_only, tasks="shard tasks", sync_hint="run in this process")

    def _follow(self, run) -> None:
        run_follow(self, run, title=f"Shard pass {run.pk}", where="/console/jobs/", report=self._report)

    def _report(self, run: ShardPassRun) -> None:
        line = shard_pass.shard_pass_summary(run)
        if run.status == RunStatus.SUCCEEDED:
            self.stdout.write(self.style.SUCCESS(line))
        else:
            raise CommandError(f"{line} {run.error}")


def _default_encoder() -> str:
    from django.conf import settings

    return settings.LOUPE_DEFAULT_ENCODER
