"""Train the downstream model on a filter run's subset and baselines: ``manage.py evaluate_filter_run 7``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from curate.downstream import DownstreamError, filter_run_downstream_evaluate
from curate.models import FilterRun

METRIC_HEADERS = (
    ("i2t_r1", "I->T R@1"),
    ("i2t_r5", "I->T R@5"),
    ("t2i_r1", "T->I R@1"),
    ("t2i_r5", "T->I R@5"),
)


def downstream_table(result: dict) -> list[str]:
    """The result as aligned text lines: one row per training set, mean ± spread over seeds."""
    lines = [f"{'trained on':<28} {'pairs':>7}  " + "  ".join(f"{h:>15}" for _, h in METRIC_HEADERS)]
    for subset in result["subsets"].values():
        cells = [f"{subset['mean'][k]:.3f} ± {subset['std'][k]:.3f}" for k, _ in METRIC_HEADERS]
        lines.append(f"{subset['label']:<28} {subset['pairs']:>7}  " + "  ".join(f"{c:>15}" for c in cells))
    delta = result["kept_minus_random"]
    lines.append(
        f"{'kept - random':<28} {'':>7}  " + "  ".join(f"{delta[k]:>+15.3f}" for k, _ in METRIC_HEADERS)
    )
    return lines


class Command(BaseCommand):
    help = (
        "Train the same small image-text model on a filter run's kept pairs, a random sample of the same "
        "size and the whole usable pool, and report zero-shot retrieval on judged-best held-out pairs."
    )

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=int, help="The filter run's id.")
        parser.add_argument("--seeds", type=int, default=3, help="Repeats per training set (mean ± spread).")
        parser.add_argument("--steps", type=int, default=None, help="Optimisation steps per model.")
        parser.add_argument("--batch-size", type=int, default=None, help="Pairs per step.")
        parser.add_argument("--pool-cap", type=int, default=None, help="Largest training set evaluated.")

    def handle(self, *args, **options):
        run = FilterRun.objects.filter(pk=options["run_id"]).first()
        if run is None:
            raise CommandError(f"No filter run {options['run_id']}.")
        config = {k: options[k] for k in ("steps", "batch_size") if options[k] is not None}
        self.stdout.write(f"Evaluating filter run {run.pk} ({run.params.get('rule_text', '')}) downstream...")
        try:
            result = filter_run_downstream_evaluate(
                run=run, seeds=options["seeds"], config=config, pool_cap=options["pool_cap"]
            )
        except (DownstreamError, FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        held = result["held_out"]
        self.stdout.write(
            f"Held out: {held['pairs']} pairs ({held['judged']} judged best, {held['proxy']} proxy); "
            f"chance R@1 {result['chance']['r1']:.3f}, R@5 {result['chance']['r5']:.3f}. {result['budget']}"
        )
        for line in downstream_table(result):
            self.stdout.write(line)
        for note in result["notes"]:
            self.stdout.write(f"  note: {note}")
        self.stdout.write(f"Stored on filter run {run.pk} (summary.downstream) in {result['seconds']}s.")
