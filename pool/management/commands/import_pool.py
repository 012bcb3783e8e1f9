"""``manage.py import_pool <source>``: index shards, a folder or a table into the pool, in place."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from pool.importing import DEFAULT_BATCH, ImportFailed, pool_import
from pool.models import RunStatus
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
    uids = summary.get("uids") or {}
    if uids:
        lines.append("uids:                      " + ", ".join(f"{k} {v}" for k, v in sorted(uids.items())))
    shards = summary.get("shards") or {}
    if shards:
        lines.append("shards:                    " + ", ".join(f"{k} {v}" for k, v in sorted(shards.items())))
    for note in summary.get("shard_notes") or []:
        lines.append(f"  shard {note['status']}: {note['shard']}: {note['reason']}")
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
    help = (
        "Index a pool in place (WebDataset/Parquet/files shards as img2dataset writes them, locally or on "
        "s3://, a folder of images, a CSV/JSONL/Parquet table). Exits non-zero when the import failed, "
        "skipped more than LOUPE_IMPORT_MAX_SKIPPED_FRACTION, or met shards that changed, vanished or "
        "could not be read."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "source",
            help="folder or s3:// prefix of shards, a shard, a table file, or a glob/brace pattern of shards",
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
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="shards indexed at a time (PostgreSQL only; default LOUPE_IMPORT_PROCESSES)",
        )

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
                processes=options["processes"],
                progress=progress,
            )
        except ImportFailed as exc:
            raise CommandError(str(exc)) from None
        finally:
            progress.close()
        self.stdout.write(f"Import {run.pk} of {run.source} ({run.format}): {run.get_outcome_display()}")
        for line in format_import_summary(run.summary):
            self.stdout.write(line)
        # Honest exit status: scripts and CI must not take an import that failed or skipped too much
        # for a success.
        if run.status == RunStatus.FAILED:
            raise CommandError(run.error or "the import failed")
        if run.problems:
            raise CommandError("finished with problems: " + "; ".join(run.problems))
