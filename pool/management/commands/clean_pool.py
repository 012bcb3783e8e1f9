"""``manage.py clean_pool``: mark low-resolution images, near duplicates and bad captions (never deletes)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from pool.cleaning_runs import pool_clean
from pool.progress import ProgressBar


class Command(BaseCommand):
    help = (
        "Mark low-resolution images, near duplicates and empty/trivial/duplicate captions. Deletes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--min-side",
            type=int,
            default=settings.LOUPE_MIN_IMAGE_SIDE,
            help="shorter side below this is low_res",
        )
        parser.add_argument(
            "--radius", type=int, default=6, help="Hamming radius (of 64 bits) for near duplicates"
        )

    def handle(self, *args, **options):
        progress = ProgressBar("clean", "row", stream=self.stderr._out, disable=options["verbosity"] == 0)
        try:
            run = pool_clean(
                min_side=options["min_side"], hamming_radius=options["radius"], progress=progress
            )
        finally:
            progress.close()
        summary = run.summary
        self.stdout.write(f"Cleaning {run.pk}: {run.status}")
        self.stdout.write("images:   " + ", ".join(f"{k} {v}" for k, v in sorted(summary["images"].items())))
        self.stdout.write(
            "captions: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["captions"].items()))
        )
        self.stdout.write(
            f"near-duplicate groups: {summary['near_duplicate_groups']}; rows re-marked: "
            f"{summary['images_changed']} images, {summary['captions_changed']} captions"
        )
