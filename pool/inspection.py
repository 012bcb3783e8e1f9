"""The first full decode of images indexed in place: validity, perceptual hash, true size.

Indexing reads only headers; an image is decoded once, here, before cleaning needs its perceptual hash.
An image whose bytes do not decode (truncated, corrupt) or are no longer the indexed ones (the shard
changed: sha256 differs) is marked ``unreadable`` with the reason; cleaning never overrides that mark.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from django.utils import timezone

from pool.images import ImageRejected, image_inspect
from pool.locate import LOCATOR_FIELDS, locator_from_values
from pool.models import Image, ImageStatus
from pool.storage import StorageError, locator_read

logger = logging.getLogger(__name__)

CHUNK = 500
# Reads wait on storage and Pillow's decoder releases the GIL: a few threads overlap both.
THREADS = 4


def _inspect(values: tuple):
    pk, *location = values
    try:
        return pk, image_inspect(locator_read(locator_from_values(*location)))
    except ImageRejected as exc:
        return pk, f"{exc.code}: {exc.message}"
    except StorageError as exc:
        return pk, str(exc)


def images_inspect(*, progress=None) -> Counter:
    """Decode every image not decoded yet; returns counts (inspected, unreadable). Safe to rerun: an
    image is decoded once, and a run cut short is completed by running again."""
    counts: Counter = Counter()
    # An image with a perceptual hash was decoded when it got it (imports before indexing in place).
    pending = Image.objects.filter(inspected_at__isnull=True, phash="").order_by("pk")
    last = 0
    with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="pool-inspect") as executor:
        while True:
            chunk = list(pending.filter(pk__gt=last).values_list("pk", *LOCATOR_FIELDS)[:CHUNK])
            if not chunk:
                break
            last = chunk[-1][0]
            statuses = dict(Image.objects.filter(pk__in=[c[0] for c in chunk]).values_list("pk", "status"))
            now = timezone.now()
            updates = []
            for pk, result in executor.map(_inspect, chunk):
                if isinstance(result, str):
                    counts["unreadable"] += 1
                    status = statuses[pk] if statuses[pk] == ImageStatus.REJECTED else ImageStatus.UNREADABLE
                    updates.append(Image(pk=pk, status=status, status_reason=result[:255], inspected_at=now))
                else:
                    counts["inspected"] += 1
                    updates.append(
                        Image(
                            pk=pk,
                            phash=result.phash,
                            width=result.width,
                            height=result.height,
                            format=result.format,
                            status=statuses[pk],
                            status_reason="",
                            inspected_at=now,
                        )
                    )
            ok = [u for u in updates if u.phash]
            bad = [u for u in updates if not u.phash]
            if ok:
                Image.objects.bulk_update(ok, ["phash", "width", "height", "format", "inspected_at"])
            if bad:
                Image.objects.bulk_update(bad, ["status", "status_reason", "inspected_at"])
            if progress:
                progress(len(chunk))
    if counts["unreadable"]:
        logger.info("inspection: %d images unreadable", counts["unreadable"])
    return counts
