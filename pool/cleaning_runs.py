"""Cleaning runs (``pool_clean``), and queueing one from a page (``cleaning_run_start``).

Cleaning recomputes every mark it owns from the data and writes only the rows whose mark changes, so
running it twice changes nothing; the pure algorithms are in ``pool.cleaning``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import transaction

from pool import cleaning
from pool.bulk import rows_update
from pool.inspection import images_inspect
from pool.models import Caption, CaptionStatus, CleaningRun, Image, ImageStatus, RunStatus
from pool.runs import Progress, run_finish, run_progress, run_start

logger = logging.getLogger(__name__)

# Marks cleaning owns; anything else (``rejected`` by a person, ``too_long`` from the import) stays.
CLEANING_IMAGE_STATUSES = {
    ImageStatus.OK,
    ImageStatus.DUPLICATE,
    ImageStatus.NEAR_DUPLICATE,
    ImageStatus.LOW_RES,
}
CLEANING_CAPTION_STATUSES = {
    CaptionStatus.OK,
    CaptionStatus.EMPTY,
    CaptionStatus.TRIVIAL,
    CaptionStatus.DUPLICATE,
}
PAGE = 20000
CHUNK = 5000


@dataclass
class _PoolArrays:
    ids: np.ndarray
    hashes: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    eligible: np.ndarray  # has a hash and is not rejected by a person


def _pool_arrays() -> _PoolArrays:
    """Read the columns cleaning needs, page by page (keyset on id): about 30 bytes per image."""
    ids, hashes, widths, heights, eligible = [], [], [], [], []
    last = 0
    while True:
        page = list(
            Image.objects.filter(pk__gt=last)
            .order_by("pk")
            .values_list("pk", "phash", "width", "height", "status")[:PAGE]
        )
        if not page:
            break
        for pk, phash, width, height, status in page:
            ids.append(pk)
            hashes.append(cleaning.phash_to_int(phash))
            widths.append(width)
            heights.append(height)
            eligible.append(bool(phash) and status != ImageStatus.REJECTED)
        last = page[-1][0]
    return _PoolArrays(
        ids=np.array(ids, dtype=np.int64),
        hashes=np.array(hashes, dtype=np.uint64),
        widths=np.array(widths, dtype=np.int64),
        heights=np.array(heights, dtype=np.int64),
        eligible=np.array(eligible, dtype=bool),
    )


def _image_marks(arrays: _PoolArrays, *, radius: int) -> tuple[dict[int, cleaning.DuplicateMark], np.ndarray]:
    """Duplicate marks and keeper per index, over the eligible images only."""
    n = len(arrays.ids)
    keeper = np.arange(n, dtype=np.int64)
    subset = np.flatnonzero(arrays.eligible)
    areas = arrays.widths * arrays.heights
    marks, sub_keeper = cleaning.near_duplicate_groups(arrays.hashes[subset], areas[subset], radius)
    keeper[subset] = subset[sub_keeper]
    by_index = {
        int(subset[m.index]): cleaning.DuplicateMark(int(subset[m.index]), int(subset[m.keeper]), m.distance)
        for m in marks
    }
    return by_index, keeper


def _image_status(index: int, arrays: _PoolArrays, marks: dict, min_side: int) -> tuple[str, str, int | None]:
    mark = marks.get(index)
    if mark is not None:
        kept_id = int(arrays.ids[mark.keeper])
        kw, kh = int(arrays.widths[mark.keeper]), int(arrays.heights[mark.keeper])
        w, h = int(arrays.widths[index]), int(arrays.heights[index])
        if mark.distance == 0 and (w, h) == (kw, kh):
            return (
                ImageStatus.DUPLICATE,
                f"same picture as image {kept_id} (identical hash and size)",
                kept_id,
            )
        return (
            ImageStatus.NEAR_DUPLICATE,
            f"near duplicate of image {kept_id} ({kw}x{kh}, kept as the highest resolution; "
            f"Hamming distance {mark.distance})",
            kept_id,
        )
    side = int(min(arrays.widths[index], arrays.heights[index]))
    if side < min_side:
        return ImageStatus.LOW_RES, f"shorter side {side} px is below {min_side} px", None
    return ImageStatus.OK, "", None


def _images_write(arrays: _PoolArrays, marks: dict, *, min_side: int, counts: Counter, tick) -> int:
    """Write the images whose mark changed. Reads the current marks by pk range (the arrays are in pk
    order), one query per chunk, and writes the changes with one ``UPDATE`` per chunk."""
    changed = 0
    n = len(arrays.ids)
    for start in range(0, n, CHUNK):
        chunk_ids = arrays.ids[start : start + CHUNK].tolist()
        current = {
            pk: (status, reason, dup)
            for pk, status, reason, dup in Image.objects.filter(
                pk__gte=chunk_ids[0], pk__lte=chunk_ids[-1]
            ).values_list("pk", "status", "status_reason", "duplicate_of_id")
        }
        updates = []
        for offset, pk in enumerate(chunk_ids):
            index = start + offset
            if pk not in current or current[pk][0] not in CLEANING_IMAGE_STATUSES:
                if pk in current:
                    counts[current[pk][0]] += 1
                continue
            status, reason, dup = _image_status(index, arrays, marks, min_side)
            counts[status] += 1
            if current[pk] != (status, reason, dup):
                updates.append({"id": pk, "status": status, "status_reason": reason, "duplicate_of_id": dup})
        changed += rows_update(Image, updates, ["status", "status_reason", "duplicate_of_id"])
        tick(len(chunk_ids))
    return changed


def _group_caption_duplicates(arrays: _PoolArrays, keeper: np.ndarray) -> tuple[dict[int, str], set[int]]:
    """Captions repeated (after normalising) within a near-duplicate group, keeper's captions first.

    Returns {caption id: reason} and the image ids that belong to a group of two or more.
    """
    members: dict[int, list[int]] = {}
    for index in np.flatnonzero(keeper != np.arange(len(keeper))).tolist():
        members.setdefault(int(keeper[index]), [int(keeper[index])]).append(index)
    grouped_ids = {int(arrays.ids[i]) for group in members.values() for i in group}
    duplicates: dict[int, str] = {}
    groups = list(members.values())
    for start in range(0, len(groups), 200):
        chunk = groups[start : start + 200]
        image_ids = [int(arrays.ids[i]) for group in chunk for i in group]
        captions: dict[int, list[tuple[int, str, str]]] = {}
        for pk, image_id, text, status in (
            Caption.objects.filter(image_id__in=image_ids)
            .order_by("pk")
            .values_list("pk", "image_id", "text", "status")
        ):
            captions.setdefault(image_id, []).append((pk, text, status))
        for group in chunk:
            seen: dict[str, tuple[int, int]] = {}
            for index in group:  # keeper first
                image_id = int(arrays.ids[index])
                for pk, text, status in captions.get(image_id, []):
                    if status not in CLEANING_CAPTION_STATUSES or cleaning.caption_check(text)[0] != "ok":
                        continue
                    norm = cleaning.caption_normalise(text)
                    if norm in seen:
                        first_pk, first_image = seen[norm]
                        where = "this image" if first_image == image_id else f"image {first_image}"
                        duplicates[pk] = f"same text as caption {first_pk} on {where}"
                    else:
                        seen[norm] = (pk, image_id)
    return duplicates, grouped_ids


def _captions_write(arrays: _PoolArrays, keeper: np.ndarray, *, counts: Counter, tick) -> int:
    group_dups, grouped_ids = _group_caption_duplicates(arrays, keeper)
    changed = 0
    ids = arrays.ids.tolist()
    for start in range(0, len(ids), CHUNK):
        chunk_ids = ids[start : start + CHUNK]
        in_chunk = set(chunk_ids)
        # By image id range (the arrays are in pk order): one index range scan instead of an IN list.
        rows = (
            Caption.objects.filter(image_id__gte=chunk_ids[0], image_id__lte=chunk_ids[-1])
            .order_by("image_id", "pk")
            .values_list("pk", "image_id", "text", "status", "status_reason")
        )
        updates = []
        seen: dict[str, int] = {}
        current_image = None
        for pk, image_id, text, status, old_reason in rows.iterator(chunk_size=5000):
            if image_id not in in_chunk:  # an image added since the arrays were read: the next run's
                continue
            if image_id != current_image:
                current_image, seen = image_id, {}
            if status not in CLEANING_CAPTION_STATUSES:
                counts[status] += 1
                continue
            norm = cleaning.caption_normalise(text)
            new_status, reason = cleaning.caption_check(text, norm)
            if new_status == "ok":
                if pk in group_dups:
                    new_status, reason = CaptionStatus.DUPLICATE, group_dups[pk]
                elif image_id not in grouped_ids:
                    if norm in seen:
                        new_status, reason = (
                            CaptionStatus.DUPLICATE,
                            f"same text as caption {seen[norm]} on this image",
                        )
                    else:
                        seen[norm] = pk
            counts[new_status] += 1
            if (status, old_reason) != (new_status, reason):
                updates.append({"id": pk, "status": new_status, "status_reason": reason})
        changed += rows_update(Caption, updates, ["status", "status_reason"])
        tick(len(chunk_ids))
    return changed


def pool_clean(
    *,
    min_side: int | None = None,
    hamming_radius: int = 6,
    run: CleaningRun | None = None,
    progress: Progress | None = None,
) -> CleaningRun:
    """Decode the images not decoded yet (unreadable ones are marked), then mark low-resolution images,
    near duplicates (grouped, highest resolution kept) and empty, trivial or repeated captions.
    Recomputes every mark it owns, so running it twice changes nothing."""
    min_side = settings.LOUPE_MIN_IMAGE_SIDE if min_side is None else min_side
    if not 0 <= hamming_radius <= 32:
        # Beyond 32 of 64 bits unrelated pictures match, and the band split needs radius + 1 <= 64.
        raise ValueError(f"hamming_radius must be between 0 and 32, not {hamming_radius}")
    if run is None:
        run = CleaningRun.objects.create(params={"min_side": min_side, "hamming_radius": hamming_radius})
    try:
        run_start(run)
        # Images indexed in place have not been decoded yet: their perceptual hashes come first.
        inspected = images_inspect()
        arrays = _pool_arrays()
        total = 2 * len(arrays.ids)
        done = 0

        def tick(count: int) -> None:
            nonlocal done
            done += count
            run_progress(run, done=done, total=total, progress=progress)

        marks, keeper = _image_marks(arrays, radius=hamming_radius)
        # No transaction around the passes: each chunk commits on its own so progress is visible, and
        # a run cut short is completed by running again (every mark is recomputed).
        image_counts: Counter = Counter()
        images_changed = _images_write(arrays, marks, min_side=min_side, counts=image_counts, tick=tick)
        caption_counts: Counter = Counter()
        captions_changed = _captions_write(arrays, keeper, counts=caption_counts, tick=tick)
        groups = len({m.keeper for m in marks.values()})
        summary = {
            "inspected": dict(inspected),
            "images": dict(image_counts),
            "captions": dict(caption_counts),
            "near_duplicate_groups": groups,
            "images_changed": images_changed,
            "captions_changed": captions_changed,
            "min_side": min_side,
            "hamming_radius": hamming_radius,
        }
    except Exception as exc:
        logger.exception("cleaning %s failed", run.pk)
        run_finish(run, status=RunStatus.FAILED, summary={}, error=f"{type(exc).__name__}: {exc}")
        raise
    run_finish(run, status=RunStatus.SUCCEEDED, summary=summary)
    return run


def cleaning_run_start(*, user=None, min_side: int | None = None, hamming_radius: int = 6) -> CleaningRun:
    from pool.tasks import cleaning_run_execute

    run = CleaningRun.objects.create(
        created_by=user,
        params={
            "min_side": settings.LOUPE_MIN_IMAGE_SIDE if min_side is None else min_side,
            "hamming_radius": hamming_radius,
        },
    )
    transaction.on_commit(lambda: cleaning_run_execute.delay(run.pk))
    return run
