"""Play simulated annotators against a campaign through the services real annotators use.

    python manage.py simulate_annotators --campaign NAME --annotators 5 --judgments 200 --noise 0.1

Each simulated user (``sim-annotator-<n>``, group annotator, unusable password) asks ``task_next``
for work and answers with ``judgment_submit`` and a fresh client key, exactly like the annotation
page. Their hidden preference is the demo's truth table (``var/demo-source/truth.jsonl``: the true
description > the title > keywords > a negative from another image, longer descriptions slightly
better) where it knows a pair, else a prior by caption source and length; noise is a Bradley-Terry
temperature (see training/simulate.py).
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import numpy as np
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError

from pool.progress import ProgressBar
from training.simulate import (
    AnnotatorConfig,
    CaptionInfo,
    HiddenPreference,
    judgment_simulate,
    source_length_quality,
    truth_preference,
)


def simulated_users(count: int) -> list[User]:
    # The role groups come from a migration; get_or_create also copes with a flushed test database.
    group, _ = Group.objects.get_or_create(name="annotator")
    users = []
    for index in range(1, count + 1):
        user, created = User.objects.get_or_create(
            username=f"sim-annotator-{index}",
            defaults={"first_name": "Simulated", "last_name": f"annotator {index}"},
        )
        if created:
            # Nobody can log in as a simulated annotator.
            user.set_unusable_password()
            user.save(update_fields=["password"])
        user.groups.add(group)
        users.append(user)
    return users


def preference_load(truth: Path | None) -> tuple[HiddenPreference, str]:
    if truth is not None and truth.exists():
        from pool.demo import demo_truth_load

        return truth_preference(demo_truth_load(truth)), f"demo truth table {truth}"
    return source_length_quality, "caption source and length prior (no truth table found)"


def task_captions(task) -> list[CaptionInfo]:
    from annotate.models import TaskCaption

    rows = (
        TaskCaption.objects.filter(task=task)
        .order_by("position")
        .values_list("caption_id", "caption__text", "caption__source")
    )
    return [CaptionInfo(cid, text, source, task.image.sha256) for cid, text, source in rows]


class Command(BaseCommand):
    help = (
        "Simulated annotators with a hidden preference and noise judge a campaign through the real services."
    )

    def add_arguments(self, parser):
        parser.add_argument("--campaign", required=True, help="Campaign name.")
        parser.add_argument("--annotators", type=int, default=5)
        parser.add_argument("--judgments", type=int, default=200, help="Judgments to submit in total.")
        parser.add_argument(
            "--noise", type=float, default=0.1, help="Bradley-Terry temperature (0 = perfect)."
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--truth", default=None, help="Truth table (JSONL of image, text, role); default: the demo's."
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(
        self, *args, campaign: str, annotators: int, judgments: int, noise: float, seed: int, **options
    ):
        from annotate.models import Campaign
        from annotate.services import JudgmentError, judgment_submit, task_next

        if annotators < 1 or judgments < 0 or noise < 0:
            raise CommandError(
                "--annotators must be at least 1; --judgments and --noise must not be negative."
            )
        found = Campaign.objects.filter(name=campaign).first()
        if found is None:
            names = ", ".join(Campaign.objects.order_by("name").values_list("name", flat=True)[:10]) or "none"
            raise CommandError(f"No campaign named {campaign!r} (campaigns: {names}).")
        truth = (
            Path(options["truth"])
            if options["truth"]
            else Path(settings.DATA_DIR) / "demo-source" / "truth.jsonl"
        )
        preference, described = preference_load(truth)
        users = simulated_users(annotators)
        config = AnnotatorConfig(noise=noise)
        rng = np.random.default_rng(seed)
        queue_rng = random.Random(seed)
        started = time.monotonic()
        made, rejected, exhausted = 0, 0, set()
        agree = pairs = 0
        per_user = {u.username: 0 for u in users}
        bar = ProgressBar(
            "Simulated judgments", "judgment", stream=self.stderr._out, disable=options["no_progress"]
        )
        turn = 0
        while made + rejected < judgments and len(exhausted) < len(users):
            user = users[turn % len(users)]
            turn += 1
            if user.pk in exhausted:
                continue
            assignment = task_next(campaign=found, user=user, rng=queue_rng)
            if assignment is None:
                exhausted.add(user.pk)
                continue
            task = assignment.task
            captions = task_captions(task)
            ranking, ratings = judgment_simulate(
                captions=captions,
                criteria=found.criterion_keys,
                preference=preference,
                config=config,
                rng=rng,
            )
            try:
                judgment_submit(
                    user=user,
                    task=task,
                    ranking=ranking,
                    ratings=ratings,
                    client_key=uuid.uuid4(),
                    duration_ms=int(rng.gamma(4.0, 4000.0)),
                )
            except JudgmentError as exc:
                rejected += 1
                self.stderr.write(f"{user.username} on task {task.pk}: judgment rejected: {exc}")
                continue
            made += 1
            per_user[user.username] += 1
            bar(made, judgments)
            a, p = _agreement_with_preference(ranking, captions, preference)
            agree, pairs = agree + a, pairs + p
        bar.close()
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"{made} judgments by {len(users)} simulated annotators on '{found}' in {elapsed:.1f}s "
            f"(noise {noise}, seed {seed}; hidden preference: {described})."
        )
        if pairs:
            self.stdout.write(
                f"Their rankings order {agree / pairs:.1%} of untied caption pairs like the hidden preference."
            )
        if rejected:
            self.stdout.write(self.style.WARNING(f"{rejected} judgments were rejected (see above)."))
        if made < judgments:
            self.stdout.write(
                f"The queue ran out after {made} judgments: every simulated annotator has judged every task "
                "open to them (add annotators or tasks for more)."
            )
        self.stdout.write("Per annotator: " + ", ".join(f"{k} {v}" for k, v in per_user.items()))


def _agreement_with_preference(
    ranking, captions: list[CaptionInfo], preference: HiddenPreference
) -> tuple[int, int]:
    quality = {c.caption_id: preference(c) for c in captions}
    position = {cid: tier for tier, ids in enumerate(ranking) for cid in ids}
    agree = pairs = 0
    ids = list(quality)
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            a, b = ids[i], ids[j]
            if quality[a] == quality[b] or position[a] == position[b]:
                continue
            pairs += 1
            agree += (quality[a] > quality[b]) == (position[a] < position[b])
    return agree, pairs
