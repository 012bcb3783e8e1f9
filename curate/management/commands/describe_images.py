"""Metadata expansion (MagicLens): ``manage.py describe_images --scorer vlm:<dir> [--limit N]`` adds a
model-written description per image as one more candidate caption (source ``model``)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Exists, OuterRef

from curate.model_captions import image_descriptions_add
from pool.models import Caption, CaptionSource, Image, ImageStatus


class Command(BaseCommand):
    help = "Add a model-written description per usable image (skips images that already have one)."

    def add_arguments(self, parser):
        parser.add_argument("--scorer", required=True, help="The multimodal model, vlm:<local dir>.")
        parser.add_argument("--limit", type=int, default=1000, help="At most this many images, oldest first.")

    def handle(self, *args, scorer, limit, **options):
        from scoring.vlm import VlmError, vlm_load

        try:
            model = vlm_load(scorer)
        except VlmError as exc:
            raise CommandError(str(exc)) from exc
        described = Caption.objects.filter(
            image_id=OuterRef("pk"), source=CaptionSource.MODEL, parent__isnull=True
        )
        ids = list(
            Image.objects.filter(status=ImageStatus.OK)
            .exclude(Exists(described))
            .order_by("id")
            .values_list("id", flat=True)[:limit]
        )
        counts = image_descriptions_add(scorer=model, image_ids=ids)
        self.stdout.write(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
