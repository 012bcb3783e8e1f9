"""Run a filter over the scored pool: ``manage.py filter_pool --top-percent 30 --min accuracy=3``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from curate.filtering import PRESETS, FilterNeedsConfirm, FilterRule, filter_run_create, filter_run_execute
from curate.selectors import score_context_default


def _criterion(value: str) -> tuple[str, float]:
    key, sep, number = value.partition("=")
    if not sep:
        raise CommandError(f"--min expects criterion=value (e.g. accuracy=3), got {value!r}")
    return key.strip(), float(number)


class Command(BaseCommand):
    help = "Filter the scored pool by rule (AND of all given predicates) and record a FilterRun."

    def add_arguments(self, parser):
        parser.add_argument("--encoder", default=None)
        parser.add_argument(
            "--reward-model-version", type=int, default=None, help="Reward model version (default: active)."
        )
        parser.add_argument("--preset", choices=sorted(PRESETS), default="")
        parser.add_argument("--top-percent", type=float, default=None, help="Keep the best k%% by reward.")
        parser.add_argument("--reward-min", type=float, default=None)
        parser.add_argument("--clipscore-min", type=float, default=None, help="Minimum cosine (DataComp).")
        parser.add_argument("--min", action="append", default=[], metavar="CRITERION=VALUE")
        parser.add_argument("--balance-clusters", type=int, default=0)
        parser.add_argument("--yes", action="store_true", help="Run even if the rule keeps nothing or all.")

    def handle(self, *args, **options):
        context = score_context_default(
            encoder=options["encoder"], reward_model_version=options["reward_model_version"]
        )
        data: dict = {"preset": options["preset"], "balance_clusters": options["balance_clusters"]}
        thresholds = {
            "reward_min": options["reward_min"],
            "cosine_min": options["clipscore_min"],
            "criteria_min": dict(_criterion(v) for v in options["min"]),
        }
        data.update({k: v for k, v in thresholds.items() if v not in (None, {})})
        if options["top_percent"] is not None:
            data["top_percent"] = options["top_percent"]
        elif not options["preset"] and len(data) > 2:
            # Thresholds alone: no top-k% cut unless asked (the default 30% applies to a bare command).
            data["top_percent"] = None
        try:
            rule = FilterRule.from_dict(data)
            run = filter_run_create(
                encoder=context.encoder,
                reward_model_version=context.reward_model_version,
                rule=rule,
                confirm=options["yes"],
            )
        except FilterNeedsConfirm as exc:
            raise CommandError(f"{exc} Pass --yes to run it anyway.") from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        run = filter_run_execute(run=run)
        ratio = f"{run.compression_ratio:.2f}x" if run.compression_ratio else "n/a"
        self.stdout.write(
            f"Filter run {run.pk}: {rule.describe()} on {run.encoder} v{run.reward_model_version}: "
            f"kept {run.kept} of {run.considered} (compression {ratio}); ids in {run.kept_file}"
        )
        for message in run.summary.get("messages", []):
            self.stdout.write(f"  {message}")
