"""Seed the demo so every screen has real content on the first visit, through the real services:

1. a real offline pool (openclipart drawings + packaged photos) imported and cleaned;
2. one user per role and a first campaign with gold tasks;
3. CLIPScore for the whole pool (a scoring run, here in this process);
4. judgments by *simulated* annotators (users ``sim-annotator-<n>``, first name "Simulated"): the
   annotator and admin pages have numbers, and the real annotators still find open tasks;
5. one pass of the loop (a LoopRun, shown in the console): train a first reward model, evaluate it, gate
   it (promoted only if it beats CLIPScore on held-out pairs), rescore the pool, reprioritise the queue,
   refresh the curators' flags, and one filter run (top 30%);
6. one export of what that filter run kept.

Idempotent: a second run finds the campaign and changes nothing (``--reset-passwords`` sets the demo
passwords again). A step that fails says why and the demo still starts with what was made.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import BaseCommand

from pool.demo import demo_source_build
from pool.progress import ProgressBar

# Simulated work on the first campaign: enough judgments for a first model (LOUPE_REWARD_MIN_JUDGMENTS)
# with held-out images, while leaving most tasks open for the people who log in.
SIMULATED = {"small": {"annotators": 4, "judgments": 160}, "full": {"annotators": 5, "judgments": 1500}}
DEMO_FILTER_RULE = {"top_percent": 30.0}
DEMO_USERS = [
    # (username, password, role, superuser)
    ("admin", "loupe-admin", "admin", True),
    ("curator", "loupe-curator", "curator", False),
    ("annotator", "loupe-annotator", "annotator", False),
    ("annotator2", "loupe-annotator", "annotator", False),
]
CAMPAIGN_NAME = "Demo: which caption describes the picture?"
CAMPAIGN_INSTRUCTIONS = """\
Rank the captions from best to worst description of **this** image, then rate each one.

- Ties are fine: if two captions are equally good, put them in the same tier.
- A caption that describes a *different* picture is worse than a terse but correct one.
- Clip-art titles are often terse or in another language: judge what they say about the image.
"""


class Command(BaseCommand):
    help = "Build the demo pool (openclipart + packaged photos), users per role and a first campaign."

    def add_arguments(self, parser):
        parser.add_argument(
            "--small", action="store_true", help="A quick demo (~150 images, well under 2 minutes)."
        )
        parser.add_argument(
            "--clipart", type=int, default=None, help="How many clip-art drawings (default 1500)."
        )
        parser.add_argument("--reset-passwords", action="store_true")

    def handle(self, *args, small: bool, clipart: int | None, reset_passwords: bool, **options):
        started = time.monotonic()
        from annotate.models import Campaign

        self._users(reset_passwords)
        if Campaign.objects.filter(name=CAMPAIGN_NAME).exists():
            self.stdout.write("Demo already seeded; nothing to do (delete var/ to start over).")
            self._print_credentials()
            return

        self._step(1, "Building the demo pool (openclipart drawings and packaged photos)")
        limit = clipart if clipart is not None else (130 if small else 1500)
        source_dir = Path(settings.DATA_DIR) / "demo-source"
        progress = ProgressBar("Rasterising clip art", "img", stream=self.stdout._out)
        built = demo_source_build(out_dir=source_dir, clipart_limit=limit, progress=progress)
        progress.close()
        self.stdout.write(
            f"Demo source: {built['images']} images ({built['rasterise_failed']} SVGs could not be rasterised)"
        )
        call_command(
            "import_pool",
            built["manifest"],
            format="jsonl",
            image_column="image",
            caption_columns="title:alt,description:human,keywords:synthetic,negative:synthetic",
            stdout=self.stdout,
            stderr=self.stdout,
        )
        call_command("clean_pool", stdout=self.stdout, stderr=self.stdout)

        self._step(2, "Users and the first campaign")
        campaign = self._campaign(small)
        admin = User.objects.get(username="admin")

        self._step(3, f"Scoring the pool with CLIPScore ({settings.LOUPE_DEFAULT_ENCODER})")
        scored = self._attempt("CLIPScore", self._first_scoring_run)

        self._step(4, "Simulated annotators judge part of the campaign")
        if scored:
            self._attempt("simulated annotators", lambda: self._simulated_judgments(campaign, small))
        else:
            self.stdout.write("Skipped: the pool has no scores (see the scoring error above).")

        self._step(5, "One pass of the loop: train, evaluate, gate, rescore, priorities, flags, filter")
        loop_run = self._attempt("the loop", lambda: self._loop(campaign, admin)) if scored else None

        self._step(6, "One export of what the filter run kept")
        if loop_run is not None:
            self._attempt("the export", lambda: self._export(loop_run, admin))
        else:
            self.stdout.write("Skipped: no filter run to export.")

        self._schedule()
        self._print_credentials()
        self.stdout.write(self.style.SUCCESS(f"Demo seeded in {time.monotonic() - started:.0f}s."))

    def _step(self, number: int, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n[{number}/6] {text}"))

    def _attempt(self, what: str, action):
        """Run one seeding step; a failure is reported in words and the demo goes on without it."""
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - the demo must still start; the reason is printed
            self.stdout.write(self.style.WARNING(f"Could not seed {what}: {type(exc).__name__}: {exc}"))
            return None

    def _first_scoring_run(self):
        """CLIPScore (reward model 0) for the whole pool, in this process: later steps need the scores."""
        from scoring.inference import scoring_run_sync
        from scoring.services import scoring_run_start

        run = scoring_run_start(encoder=settings.LOUPE_DEFAULT_ENCODER, reward_model_version=0, enqueue=False)
        bar = ProgressBar(f"Scoring run {run.pk}", "pair", stream=self.stdout._out)
        run = scoring_run_sync(run=run, progress=lambda current: bar(current.done, current.total))
        bar.close()
        self.stdout.write(f"Scoring run {run.pk}: {run.status}, {run.done} pairs scored.")
        return run if run.status == "succeeded" else None

    def _simulated_judgments(self, campaign, small: bool) -> None:
        plan = SIMULATED["small" if small else "full"]
        call_command(
            "simulate_annotators",
            campaign=campaign.name,
            annotators=plan["annotators"],
            judgments=plan["judgments"],
            noise=0.15,
            seed=0,
            stdout=self.stdout,
            stderr=self.stdout,
        )

    def _loop(self, campaign, admin):
        from loop.runs import params_update
        from loop.services import loop_run_inline, loop_start

        run = loop_start(
            campaign=campaign, trigger="demo", user=admin, filter_rule=DEMO_FILTER_RULE, enqueue=False
        )
        # Flags are refreshed even if the gate refuses the model: curators then review on CLIPScore.
        params_update(run, force_flags=True)
        run = loop_run_inline(run=run, poll_seconds=0.5)
        for line in run.log.splitlines():
            self.stdout.write("  " + line.split(" ", 2)[-1])
        if run.status != "succeeded":
            self.stdout.write(self.style.WARNING(f"Loop run {run.pk} {run.status}: {run.error}"))
        summary = run.summary or {}
        if summary.get("promoted"):
            self.stdout.write(
                self.style.SUCCESS(
                    f"Reward model v{summary.get('active_version')} is active: {summary.get('gate_note', '')}"
                )
            )
        elif "promoted" in summary:
            self.stdout.write(
                self.style.WARNING(
                    "The gate refused the first reward model "
                    f"({summary.get('gate_note', 'no note')}). The Models page shows it as a candidate; "
                    "flags and the filter run use CLIPScore until a model passes the gate."
                )
            )
        return run

    def _export(self, loop_run, admin) -> None:
        from curate.exports import export_create, export_execute
        from curate.models import FilterRun

        filter_run = FilterRun.objects.filter(pk=(loop_run.params or {}).get("filter_run_id")).first()
        if filter_run is None or filter_run.status != "succeeded":
            self.stdout.write("Skipped: the loop made no filter run.")
            return
        export = export_execute(export=export_create(kind="jsonl", filter_run=filter_run, user=admin))
        self.stdout.write(
            f"Export {export.pk} ({export.kind}): {export.status}, {filter_run.kept} pairs in {export.path}"
        )

    def _users(self, reset_passwords: bool) -> None:
        for username, password, role, superuser in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username)
            if created or reset_passwords:
                user.set_password(password)
                user.is_staff = user.is_superuser = superuser
                user.save()
            user.groups.add(Group.objects.get_or_create(name=role)[0])

    def _campaign(self, small: bool):
        from annotate.models import Task
        from annotate.services import campaign_create, campaign_tasks_build, task_gold_set

        campaign = campaign_create(
            name=CAMPAIGN_NAME,
            instructions=CAMPAIGN_INSTRUCTIONS,
            captions_per_task=4,
            overlap=2,
            gold_rate=0.1,
        )
        built = campaign_tasks_build(campaign=campaign)
        gold = self._gold_tasks(campaign, Task, task_gold_set, count=5 if small else 25)
        self.stdout.write(f"Campaign '{campaign.name}': {built} tasks, {gold} gold.")
        return campaign

    def _gold_tasks(self, campaign, task_model, task_gold_set, count: int) -> int:
        """Gold = tasks whose known order follows the demo's truth: description > title > keywords > negative."""
        from pool.demo import demo_truth_load

        truth_file = Path(settings.DATA_DIR) / "demo-source" / "truth.jsonl"
        if not truth_file.exists():
            return 0
        quality = demo_truth_load(truth_file)
        made = 0
        for task in task_model.objects.filter(campaign=campaign).select_related("image").order_by("id"):
            captions = list(task.captions.all())
            scored = [(quality.get((task.image.sha256, c.text.strip())), c.id) for c in captions]
            if (
                len(scored) < 3
                or any(q is None for q, _ in scored)
                or len({q for q, _ in scored}) < len(scored)
            ):
                continue
            ranking = [[caption_id] for _, caption_id in sorted(scored, reverse=True)]
            task_gold_set(task=task, ranking=ranking)
            made += 1
            if made >= count:
                break
        return made

    def _schedule(self) -> None:
        try:
            call_command("install_schedule", stdout=self.stdout)
        except Exception as exc:  # noqa: BLE001 - the demo works without the loop's schedule
            self.stdout.write(self.style.WARNING(f"Loop schedule not installed: {exc}"))

    def _print_credentials(self) -> None:
        self.stdout.write("\nLog in as (the address is printed once the server answers):")
        for username, password, role, _ in DEMO_USERS:
            self.stdout.write(f"  {role:<10} {username:<11} password: {password}")
