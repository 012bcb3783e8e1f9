"""Export a campaign's judgments: ``manage.py export_judgments --campaign NAME --format coco_hf --out PATH``."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotate.exports import judgments_coco_hf, preference_pairs_jsonl
from annotate.models import Campaign
from pool.query_params import INT64_MAX, int_param

WRITERS = {"coco_hf": judgments_coco_hf, "pairs": preference_pairs_jsonl}


class Command(BaseCommand):
    help = "Export a campaign's judgments as COCO-HF-style JSON (coco_hf) or preference pairs JSONL (pairs)."

    def add_arguments(self, parser):
        parser.add_argument("--campaign", required=True, help="Campaign name (or numeric id).")
        parser.add_argument("--format", required=True, choices=sorted(WRITERS))
        parser.add_argument("--out", required=True, help="File to write.")
        parser.add_argument("--overwrite", action="store_true", help="Replace an existing file.")

    def handle(self, *args, campaign, format, out, overwrite, **options):
        found = Campaign.objects.filter(name=campaign).first()
        campaign_id = int_param(campaign, maximum=INT64_MAX)
        if found is None and campaign_id is not None:
            found = Campaign.objects.filter(pk=campaign_id).first()
        if found is None:
            names = ", ".join(Campaign.objects.order_by("name").values_list("name", flat=True)[:20]) or "none"
            raise CommandError(f"No campaign named {campaign!r}. Campaigns: {names}.")
        path = Path(out)
        if path.exists() and not overwrite:
            raise CommandError(f"{path} already exists; pass --overwrite to replace it.")
        if not path.parent.exists():
            raise CommandError(f"Folder {path.parent} does not exist.")
        # Write beside the target and rename, so a failed export never leaves half a file at PATH.
        partial = path.with_name(path.name + ".partial")
        with open(partial, "w", encoding="utf-8") as stream:
            count = WRITERS[format](campaign=found, stream=stream)
        os.replace(partial, path)
        unit = "task records" if format == "coco_hf" else "pairs"
        self.stdout.write(self.style.SUCCESS(f"Wrote {count} {unit} of campaign {found.name!r} to {path}."))
