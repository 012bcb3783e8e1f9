"""Mark near-identical captions of the same image: ``manage.py dedupe_captions [--threshold 0.92]``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from scoring.text_similarity import captions_near_identical, near_identical_marks_apply


class Command(BaseCommand):
    help = "Mark captions nearly identical (MiniLM cosine >= threshold) to an earlier caption of their image."

    def add_arguments(self, parser):
        parser.add_argument(
            "--threshold", type=float, default=0.92, help="Cosine at or above which two match."
        )
        parser.add_argument("--dry-run", action="store_true", help="List the matches, change nothing.")

    def handle(self, *args, threshold, dry_run, **options):
        if not 0.0 < threshold <= 1.0:
            raise CommandError(f"--threshold must be in (0, 1], got {threshold}.")
        marks = captions_near_identical(threshold=threshold)
        for mark in marks[:20]:
            self.stdout.write(f"caption {mark.caption_id}: {mark.reason}")
        if len(marks) > 20:
            self.stdout.write(f"... and {len(marks) - 20} more")
        if dry_run:
            self.stdout.write(f"{len(marks)} near-identical captions found (dry run, nothing changed).")
            return
        changed = near_identical_marks_apply(marks=marks)
        self.stdout.write(self.style.SUCCESS(f"{changed} captions marked duplicate ({len(marks)} found)."))
