"""Export a filter run: ``manage.py export_dataset --filter-run 3 --kind parquet --out DIR [--overwrite]``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from curate.exports import DEFAULT_SHARD_SIZE, ExportError, export_create, export_execute
from curate.models import Export, FilterRun


class Command(BaseCommand):
    help = "Write a filter run's kept pairs (or a campaign's judgments) as a dataset with a manifest."

    def add_arguments(self, parser):
        parser.add_argument("--filter-run", type=int, default=None)
        parser.add_argument("--kind", choices=Export.Kind.values, required=True)
        parser.add_argument("--out", default=None, help="Output directory (must not exist).")
        parser.add_argument("--overwrite", action="store_true")
        parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
        parser.add_argument("--campaign", type=int, default=None, help="Campaign id (preferences, coco_hf).")

    def handle(self, *args, **options):
        run = None
        if options["filter_run"] is not None:
            run = FilterRun.objects.filter(pk=options["filter_run"]).first()
            if run is None:
                raise CommandError(f"Filter run {options['filter_run']} does not exist.")
        try:
            export = export_create(
                kind=options["kind"],
                filter_run=run,
                out=options["out"],
                overwrite=options["overwrite"],
                shard_size=options["shard_size"],
                campaign_id=options["campaign"],
            )
            export = export_execute(export=export)
        except (ExportError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        counts = ", ".join(
            f"{k} {v}" for k, v in export.manifest["counts"].items() if not isinstance(v, list)
        )
        self.stdout.write(f"Export {export.pk} ({export.kind}) written to {export.path}: {counts}")
