"""``manage.py import_pool <source>``: import a folder, a table or WebDataset shards into the pool."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from pool.importing import ImportFailed, pool_import
from pool.progress import ProgressBar
from pool.readers import FORMATS


def format_import_summary(summary: dict, *, listed: int = 20) -> list[str]:
    lines = [
        f"records read:              {summary.get('records', 0)}",
        f"images imported:           {summary.get('images_imported', 0)}",
        f"captions imported:         {summary.get('captions_imported', 0)}",
        f"duplicate images:          {summary.get('images_duplicate', 0)} (captions attached to the existing image)",
        f"already present:           {summary.get('already_present', 0)} records, "
        f"{summary.get('captions_already_present', 0)} captions",
    ]
    if summary.get("more_captions"):
        lines.append(f"more captions for an image: {summary['more_captions']} records")
    marked = summary.get("captions_marked") or {}
    if marked:
        lines.append("captions kept but marked:  " + ", ".join(f"{k} {v}" for k, v in sorted(marked.items())))
    skipped = summary.get("skipped") or {}
    lines.append(f"rejected / skipped:        {summary.get('skipped_total', 0)}")
    for code, count in sorted(skipped.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {code}: {count}")
    skips = summary.get("skips") or []
    if skips:
        lines.append(f"first skipped rows (of {summary.get('skipped_total', 0)}):")
        for skip in skips[:listed]:
            where = skip["file"] if skip.get("row") in (None, "") else f"{skip['file']}:{skip['row']}"
            lines.append(f"  {where}: {skip['reason']}")
    return lines


class Command(BaseCommand):
    help = "Import images and captions (folder, CSV/JSONL/Parquet, WebDataset shards) into the pool."

    def add_arguments(self, parser):
        parser.add_argument(
            "source", help="folder, table file, shard folder, or a glob/brace pattern of shards"
        )
        parser.add_argument(
            "--format", choices=FORMATS, help="default: from the extension or folder contents"
        )
        parser.add_argument("--image-column", help="column with the image path (default: autodetect)")
        parser.add_argument(
            "--caption-columns",
            help="comma-separated caption columns, each optionally with its source: title:alt,description:human",
        )
        parser.add_argument(
            "--caption-source",
            default="alt",
            choices=["alt", "synthetic", "model", "rewrite", "human"],
            help="source of captions whose column names none (default: alt)",
        )
        parser.add_argument(
            "--root", help="image paths in a table must lie below this folder (default: the table's folder)"
        )
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args, **options):
        progress = ProgressBar("import", "rec", stream=self.stderr._out, disable=options["verbosity"] == 0)
        try:
            run = pool_import(
                source=options["source"],
                format=options["format"],
                image_column=options["image_column"],
                caption_columns=options["caption_columns"],
                caption_source=options["caption_source"],
                batch_size=options["batch_size"],
                root=options["root"],
                progress=progress,
            )
        except ImportFailed as exc:
            raise CommandError(str(exc)) from None
        finally:
            progress.close()
        self.stdout.write(f"Import {run.pk} of {run.source} ({run.format}): {run.status}")
        for line in format_import_summary(run.summary):
            self.stdout.write(line)
