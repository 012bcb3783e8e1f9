"""Seed the demo: a real offline pool, one user per role, a first campaign with gold tasks.

Idempotent: a second run finds the pool, users and campaign and changes nothing (``--reset-passwords``
sets the demo passwords again).
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

        limit = clipart if clipart is not None else (130 if small else 1500)
        source_dir = Path(settings.DATA_DIR) / "demo-source"
        progress = ProgressBar("Rasterising clip art", "img")
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
        )
        call_command("clean_pool", stdout=self.stdout)
        self._campaign(small)
        self._first_scoring_run()
        self._schedule()
        self._print_credentials()
        self.stdout.write(self.style.SUCCESS(f"Demo ready in {time.monotonic() - started:.0f}s."))

    def _users(self, reset_passwords: bool) -> None:
        for username, password, role, superuser in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username)
            if created or reset_passwords:
                user.set_password(password)
                user.is_staff = user.is_superuser = superuser
                user.save()
            user.groups.add(Group.objects.get_or_create(name=role)[0])

    def _campaign(self, small: bool) -> None:
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

    def _first_scoring_run(self) -> None:
        """CLIPScore for the whole pool, queued now and run by the worker once the demo starts."""
        from scoring.services import scoring_run_start

        run = scoring_run_start(encoder=settings.LOUPE_DEFAULT_ENCODER, chunk_size=256)
        self.stdout.write(f"Queued scoring run {run.pk} ({run.encoder}); the worker starts it with the demo.")

    def _schedule(self) -> None:
        try:
            call_command("install_schedule", stdout=self.stdout)
        except Exception as exc:  # noqa: BLE001 - the demo works without the loop's schedule
            self.stdout.write(self.style.WARNING(f"Loop schedule not installed: {exc}"))

    def _print_credentials(self) -> None:
        self.stdout.write("\nOpen http://localhost:8000 and log in as:")
        for username, password, role, _ in DEMO_USERS:
            self.stdout.write(f"  {role:<10} {username:<11} password: {password}")
