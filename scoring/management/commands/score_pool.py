"""Score the pool: ``manage.py score_pool [--encoder NAME] [--chunk-size N] [--sync]``.

With a multimodal judge, ``--scorer vlm:<dir> --band reward:40-60`` fills MLM-Filter's four metrics for
the pairs whose reward lies between those percentiles of the active scoring (or ``--captions FILE``)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from pool.models import RunStatus
from pool.progress import ProgressBar
from scoring import inference, services
from scoring.encoders import EncoderError, encoder_load
from scoring.management.gpu_workers import gpu_worker_check, run_follow
from scoring.models import ScoringRun


class Command(BaseCommand):
    help = (
        "Score every usable pair of the pool (CLIPScore, and reward/criteria/uncertainty with the active "
        "reward model). Without --sync the run is queued for the gpu workers and this command follows "
        "its progress; Ctrl-C stops following, not the run."
    )

    def add_arguments(self, parser):
        parser.add_argument("--encoder", default=None, help="Encoder name (default: LOUPE_DEFAULT_ENCODER).")
        parser.add_argument("--chunk-size", type=int, default=2048, help="Pairs per chunk task.")
        parser.add_argument(
            "--reward-model-version",
            type=int,
            default=None,
            help="Reward model version (default: the active one; 0 = CLIPScore only).",
        )
        parser.add_argument(
            "--sync", action="store_true", help="Score in this process instead of the workers."
        )
        parser.add_argument(
            "--resume", type=int, metavar="RUN", help="Re-queue the unfinished chunks of RUN."
        )
        parser.add_argument("--no-wait", action="store_true", help="Queue the run and return at once.")
        parser.add_argument(
            "--scorer",
            default=None,
            help="A multimodal judge, vlm:<local dir> (or vlm:<hub id> with internet): MLM-Filter's four metrics.",
        )
        parser.add_argument(
            "--band",
            default=None,
            metavar="FIELD:LOW-HIGH",
            help="With --scorer: judge only the pairs whose reward (or clipscore) lies between these "
            "percentiles of --encoder's scoring, e.g. reward:40-60 (the middle 20%%).",
        )
        parser.add_argument(
            "--captions",
            default=None,
            metavar="FILE",
            help="With --scorer: judge these caption ids (one per line).",
        )

    def handle(self, *args, encoder, chunk_size, reward_model_version, sync, resume, no_wait, **options):
        if options.get("scorer"):
            return self._judge(
                options,
                encoder=encoder,
                reward_model_version=reward_model_version,
                sync=sync,
                no_wait=no_wait,
            )
        if resume is not None:
            try:
                run = ScoringRun.objects.get(pk=resume)
            except ScoringRun.DoesNotExist as exc:
                raise CommandError(f"No scoring run {resume}.") from exc
            pending = services.scoring_run_resume(run=run)
            self.stdout.write(f"Scoring run {run.pk}: {len(pending)} unfinished chunks queued again.")
            if not no_wait:
                self._follow(run)
            return
        if not sync:
            self._check_a_worker_listens(queue_only=no_wait)
        try:
            if sync:
                # Load first: a bad name or weights file is one error, before a run row exists.
                encoder_load(encoder or _default_encoder())
            run = services.scoring_run_start(
                encoder=encoder,
                reward_model_version=reward_model_version,
                chunk_size=chunk_size,
                enqueue=not sync,
            )
        except (EncoderError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Scoring run {run.pk}: {run.encoder}, "
            + (f"reward model v{run.reward_model_version}" if run.reward_model_version else "CLIPScore only")
        )
        if sync:
            bar = ProgressBar(f"Scoring run {run.pk}", "pair", stream=self.stderr._out)
            run = inference.scoring_run_sync(
                run=run, progress=lambda current: bar(current.done, current.total)
            )
            bar.close()
            self._report(run)
        elif not no_wait:
            self._follow(run)

    def _judge(self, options, *, encoder, reward_model_version, sync, no_wait) -> None:
        from scoring.active_model import active_model_get
        from scoring.vlm_runs import DEFAULT_CHUNK, vlm_band_resolve, vlm_run_start

        band = caption_ids = None
        try:
            if options.get("captions"):
                with open(options["captions"]) as handle:
                    caption_ids = [int(line) for line in handle if line.strip()]
            elif options.get("band"):
                field, _, span = options["band"].partition(":")
                low, _, high = span.partition("-")
                encoder = encoder or _default_encoder()
                if reward_model_version is None:
                    active = active_model_get(encoder=encoder)
                    reward_model_version = active.version if active else 0
                band = vlm_band_resolve(
                    encoder=encoder,
                    reward_model_version=reward_model_version,
                    field=field,
                    low_percent=float(low),
                    high_percent=float(high),
                )
            else:
                raise CommandError(
                    "A judge is costly: give --band FIELD:LOW-HIGH (e.g. reward:40-60) or --captions FILE."
                )
            if sync:
                inference.scorer_load(options["scorer"])
            run = vlm_run_start(
                scorer=options["scorer"],
                band=band,
                caption_ids=caption_ids,
                chunk_size=DEFAULT_CHUNK,
                enqueue=not sync,
            )
        except (EncoderError, ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        what = (
            f"{band['field']} percentiles {band['low_percent']:g}-{band['high_percent']:g}"
            if band
            else f"{len(caption_ids)} captions"
        )
        self.stdout.write(f"Judge run {run.pk}: {run.encoder} over {what}")
        if sync:
            run = inference.scoring_run_sync(run=run)
            self._report(run)
        elif not no_wait:
            self._follow(run)

    def _check_a_worker_listens(self, *, queue_only: bool) -> None:
        gpu_worker_check(
            self, queue_only=queue_only, tasks="scoring tasks", sync_hint="score in this process"
        )

    def _follow(self, run) -> None:
        run_follow(
            self, run, title=f"Scoring run {run.pk}", where=f"/scoring/runs/{run.pk}/", report=self._report
        )

    def _report(self, run: ScoringRun) -> None:
        line = (
            f"Scoring run {run.pk} {run.status}: {run.done}/{run.total} pairs, "
            f"{run.failed_pairs} unscorable, {run.chunks_done}/{run.chunks_total} chunks."
        )
        if run.status == RunStatus.SUCCEEDED:
            self.stdout.write(self.style.SUCCESS(line))
        else:
            raise CommandError(f"{line} {run.error}")


def _default_encoder() -> str:
    from scoring.active_model import loop_encoder_get

    return loop_encoder_get()
