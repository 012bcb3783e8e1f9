"""The shard pass: one pass over the bytes of each pool shard, for one encoder identity.

Per shard (the unit of distribution and of idempotence) a worker reads the shard's images in storage
order (a tar front to back, a Parquet file row group by row group), decodes each image ONCE and feeds
that one decoded picture to everything that needs pixels: validity (``pool.images.image_decode``: the
same checks, pixel limit and perceptual hash as ``pool.inspection``), the sha256 check of the bytes
against the index, the true size, and the encoder's preprocessing. It then

- embeds the images and the distinct caption texts the embedding cache lacks, and writes them to the
  content-keyed cache (``scoring.cache``): training, per-chunk scoring and active learning find them;
- writes the shard's by-shard feature files (``scoring.shard_features``), which a bulk rescore streams;
- in ONE transaction: updates the Image rows (phash, width, height, format, ``inspected_at``, or
  ``unreadable`` with the reason; ``rejected`` is never overridden), upserts one CLIPScore ``Score`` per
  pair (reward model version 0, the key ``scoring.inference`` upserts on), marks the shard done and
  bumps the run's counters.

Rerunning a shard replaces its results (files renamed into place, rows updated, scores upserted) and a
shard flips ``done`` once per run, so nothing is counted twice. Cleaning (``pool.inspection``) skips the
images the pass inspected, and scoring finds their features in the cache: neither decodes again.

The run lifecycle here imports no torch (the console lists these runs); the per-shard work imports the
ML modules inside its functions, on the worker.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from pool.locate import LOCATOR_FIELDS, locator_from_values
from pool.models import Caption, Image, ImageStatus, RunStatus, Shard, ShardStatus
from pool.run_health import Heartbeat
from pool.storage import BytesChanged, Locator, StorageError
from scoring.encoder_names import encoder_fingerprint, encoder_name_check, is_vlm
from scoring.models import Score, ShardPassRun, ShardPassShard
from scoring.services import SCORE_UPDATE_FIELDS, clipscore

logger = logging.getLogger(__name__)

FINISHED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
# The shards a run over "all" takes: indexed ones, and changed ones (every image's bytes are checked
# against its sha256, so what changed is marked unreadable, and the rest is still read).
PASSABLE = (ShardStatus.INDEXED, ShardStatus.CHANGED)


class ShardPassError(ValueError):
    """A shard pass that cannot start or continue; the message says why in words."""


# --- runs (no torch) ------------------------------------------------------------------------------


def shard_pass_start(
    *,
    encoder: str | None = None,
    shard_ids: list[int] | None = None,
    user=None,
    enqueue: bool = True,
) -> ShardPassRun:
    """Create a run over every indexed shard (or ``shard_ids``) with one row per shard, and enqueue it
    (on commit). A bad encoder name or an unknown shard raises ``ShardPassError`` before anything runs."""
    encoder = encoder or settings.LOUPE_DEFAULT_ENCODER
    if is_vlm(encoder):
        raise ShardPassError(f"{encoder!r} is a multimodal judge; the shard pass runs an image-text encoder.")
    try:
        encoder_name_check(encoder)
        # Hashes the weights file (no torch): the run's scores, cache and feature files are keyed by
        # it, and a worker that finds other weights behind the name refuses to mix them in.
        fingerprint = encoder_fingerprint(encoder)
    except ValueError as exc:
        raise ShardPassError(str(exc)) from exc
    if shard_ids is None:
        shards = Shard.objects.filter(status__in=PASSABLE)
    else:
        wanted = sorted({int(i) for i in shard_ids})
        shards = Shard.objects.filter(pk__in=wanted)
        missing = sorted(set(wanted) - set(shards.values_list("pk", flat=True)))
        if missing:
            raise ShardPassError(f"No pool shard with id {', '.join(map(str, missing))}.")
    planned = list(shards.order_by("pk").values_list("pk", "samples"))
    with transaction.atomic():
        run = ShardPassRun.objects.create(
            encoder=encoder,
            encoder_fingerprint=fingerprint,
            shards_total=len(planned),
            total=sum(samples for _, samples in planned),
            params={"shards": "all" if shard_ids is None else [pk for pk, _ in planned]},
            created_by=user if getattr(user, "is_authenticated", False) else None,
        )
        ShardPassShard.objects.bulk_create(
            [ShardPassShard(run=run, shard_id=pk, planned=samples) for pk, samples in planned],
            batch_size=2000,
        )
        if enqueue:
            from scoring.tasks import shard_pass_run_execute

            transaction.on_commit(lambda: shard_pass_run_execute.delay(run.pk))
    return run


def shard_pass_begin(*, run: ShardPassRun) -> list[int]:
    """Mark the run running (once) and return the shards still to do; an empty run succeeds here."""
    if run.status in FINISHED:
        return []
    now = timezone.now()
    ShardPassRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=now, heartbeat_at=now
    )
    pending = shard_pass_pending(run=run)
    if not pending:
        shard_pass_finish_if_complete(run.pk)
    return pending


def shard_pass_pending(*, run: ShardPassRun) -> list[int]:
    return list(run.shards.filter(done=False).order_by("shard_id").values_list("shard_id", flat=True))


def shard_pass_finish_if_complete(run_id: int) -> None:
    ShardPassRun.objects.filter(
        pk=run_id, status=RunStatus.RUNNING, shards_done__gte=F("shards_total")
    ).update(status=RunStatus.SUCCEEDED, finished_at=timezone.now())


def shard_pass_fail(*, run_id: int, error: str) -> None:
    ShardPassRun.objects.filter(pk=run_id).exclude(status__in=FINISHED).update(
        status=RunStatus.FAILED, error=error[:5000], finished_at=timezone.now()
    )


def shard_pass_cancel(*, run: ShardPassRun) -> bool:
    """Stop a run: shards not yet committed skip their writes. False if it had already finished."""
    return bool(
        ShardPassRun.objects.filter(pk=run.pk)
        .exclude(status__in=FINISHED)
        .update(status=RunStatus.CANCELLED, finished_at=timezone.now())
    )


def shard_pass_resume(*, run: ShardPassRun) -> list[int]:
    """Re-enqueue the shards with nothing committed (a killed worker, a failure fixed since). Safe while
    old messages may still arrive: a shard already done does nothing."""
    from scoring.tasks import shard_pass_run_execute, shard_pass_shard_execute

    if run.status in (RunStatus.CANCELLED, RunStatus.SUCCEEDED):
        return []
    if run.status == RunStatus.QUEUED:
        transaction.on_commit(lambda: shard_pass_run_execute.delay(run.pk))
        return shard_pass_pending(run=run)
    ShardPassRun.objects.filter(pk=run.pk, status=RunStatus.FAILED).update(
        status=RunStatus.RUNNING, error="", finished_at=None
    )
    pending = shard_pass_pending(run=run)
    for shard_id in pending:
        transaction.on_commit(lambda s=shard_id: shard_pass_shard_execute.delay(run.pk, s))
    if not pending:
        shard_pass_finish_if_complete(run.pk)
    return pending


def shard_pass_summary(run: ShardPassRun) -> str:
    return (
        f"Shard pass {run.pk} {run.status}: {run.shards_done}/{run.shards_total} shards, "
        f"{run.done}/{run.total} pairs, {run.images_done} images ({run.unreadable_images} unreadable), "
        f"{run.failed_pairs} pairs unscorable, {run.shards_failed} shards unreadable."
    )


# --- one shard (worker side: imports the ML modules inside) ----------------------------------------


@dataclass
class _Decoded:
    """What one decode gives: the checks' outcome and, when wanted, the encoder's uint8 crop."""

    index: int
    info: tuple | None = None  # (phash, width, height, format)
    crop: object = None  # torch uint8 [3, S, S]
    error: str = ""


def _read_block(locators: list[Locator]) -> list[bytes | StorageError]:
    """The bytes of consecutive images of one shard, read front to back through one handle (a tar's
    members in offset order), each checked against its sha256 like ``pool.storage.locator_read``."""
    from pool.storage import locator_read, open_uri

    out: list[bytes | StorageError] = []
    ranged = locators and all(loc.offset is not None for loc in locators)
    uris = {loc.uri for loc in locators}
    if not ranged or len(uris) != 1:
        for loc in locators:
            try:
                out.append(locator_read(loc))
            except StorageError as exc:
                out.append(exc)
        return out
    try:
        handle = open_uri(next(iter(uris)))
    except StorageError as exc:
        return [exc] * len(locators)
    with handle:
        for loc in locators:
            length = int(loc.length or 0)
            try:
                handle.seek(loc.offset)
                data = handle.read(length)
            except OSError as exc:
                out.append(StorageError(f"cannot read {loc.describe()}: {exc}"))
                continue
            if len(data) != length:
                out.append(
                    StorageError(
                        f"{loc.uri} holds {len(data)} of the {length} bytes expected at offset {loc.offset}: "
                        "the shard changed or was truncated since it was indexed"
                    )
                )
            elif loc.sha256 and hashlib.sha256(data).hexdigest() != loc.sha256:
                out.append(
                    BytesChanged(
                        f"the bytes at {loc.describe()} are not the image that was indexed there "
                        "(sha256 differs): the source changed since the import"
                    )
                )
            else:
                out.append(data)
    return out


def decode_once(data: bytes, *, preprocess, max_pixels: int, want_crop: bool) -> tuple[tuple, object]:
    """One decode for everything: ``pool.images.image_decode`` (validity, pixel limit, phash, size) and,
    from the same decoded picture, the encoder's uint8 crop. ``ImageRejected`` when unusable."""
    from pool import images

    info, img = images.image_decode(data, max_pixels=max_pixels)
    try:
        crop = None
        if want_crop:
            source = img
            factor = _draft_factor(info.width, info.height, preprocess.size) if info.format == "JPEG" else 1
            if factor > 1:
                # What the scoring pipeline's JPEG draft mode decodes (DCT scaling by 1/2, 1/4, 1/8),
                # as a box reduction of the full decode the phash needed: the same geometry and nearly
                # the same pixels, and the bicubic resize then starts from the small image.
                try:
                    source = img.reduce(factor)
                except (ValueError, OSError):  # a mode reduce() does not take: resize from full size
                    source = img
            crop = preprocess.to_uint8(source)
            if source is not img:
                source.close()
    finally:
        img.close()
    return (info.phash, info.width, info.height, info.format), crop


def _draft_factor(width: int, height: int, size: int) -> int:
    """The scale Pillow's ``JpegImageFile.draft`` picks for a (size, size) request."""
    scale = min(width // size, height // size)
    return next((f for f in (8, 4, 2, 1) if scale >= f), 1)


class _ShardBlocks:
    """A torch Dataset of blocks of consecutive images (storage order); DataLoader workers each take a
    block, read it front to back and decode each image once."""

    def __init__(self, locators, want_crop, preprocess, max_pixels: int, block: int):
        self.locators, self.want_crop = locators, want_crop
        self.preprocess, self.max_pixels = preprocess, max_pixels
        self.starts = list(range(0, len(locators), block))
        self.block = block

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> list[_Decoded]:
        from pool.images import ImageRejected

        start = self.starts[i]
        locators = self.locators[start : start + self.block]
        out = []
        for j, data in enumerate(_read_block(locators)):
            index = start + j
            if isinstance(data, StorageError):
                out.append(_Decoded(index, error=str(data)))
                continue
            try:
                info, crop = decode_once(
                    data,
                    preprocess=self.preprocess,
                    max_pixels=self.max_pixels,
                    want_crop=self.want_crop[index],
                )
            except ImageRejected as exc:
                out.append(_Decoded(index, error=f"{exc.code}: {exc.message}"))
            except Exception as exc:  # noqa: BLE001 - one bad image never stops its shard
                out.append(_Decoded(index, error=f"cannot decode image: {type(exc).__name__}: {exc}"[:400]))
            else:
                out.append(_Decoded(index, info=info, crop=crop))
        return out


def _identity(items):
    return items


@dataclass
class ShardOutcome:
    image_ids: list[int]
    infos: dict[int, tuple] = field(default_factory=dict)  # image pk -> (phash, w, h, format)
    errors: dict[int, str] = field(default_factory=dict)  # image pk -> why unreadable
    features: dict[int, object] = field(default_factory=dict)  # image pk -> float16 row
    decodes: int = 0


def shard_images_pass(
    *, encoder, images: list[tuple], cache, num_workers: int | None = None, progress=None
) -> ShardOutcome:
    """Decode each image of ``images`` ((pk, sha256, Locator) in storage order) once; embed those the
    cache lacks (and put them there). Features are float16 rows, as the cache holds them."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from scoring.pipeline import batch_size_default, loader_workers_default

    outcome = ShardOutcome(image_ids=[pk for pk, _, _ in images])
    if not images:
        return outcome
    shas = [sha for _, sha, _ in images]
    cached, found = cache.get_images(shas)
    want_crop = [not bool(f) for f in found]
    batch = batch_size_default(encoder)
    workers = loader_workers_default(len(images), batch) if num_workers is None else num_workers
    dataset = _ShardBlocks(
        [loc for _, _, loc in images],
        want_crop,
        encoder.preprocess,
        int(settings.LOUPE_MAX_IMAGE_PIXELS),
        batch,
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
        prefetch_factor=2 if workers else None,
    )
    new_shas: list[str] = []
    new_rows: list[np.ndarray] = []
    for items in loader:
        crops = []
        for it in items:
            pk = images[it.index][0]
            if it.error:
                outcome.errors[pk] = it.error
                continue
            outcome.decodes += 1
            outcome.infos[pk] = it.info
            if it.crop is None:
                outcome.features[pk] = cached[it.index]
            else:
                crops.append(it)
        if crops:
            feats = encoder.encode_images(torch.stack([it.crop for it in crops])).numpy().astype(np.float16)
            for it, row in zip(crops, feats, strict=True):
                outcome.features[images[it.index][0]] = row
                new_shas.append(shas[it.index])
                new_rows.append(row)
        if progress is not None:
            progress(len(items))
    if new_shas:
        # Unique keys only: two images of one shard never share a sha256 (it is the Image key).
        cache.put_images(new_shas, np.stack(new_rows))
    return outcome


def _location_key(loc: Locator) -> tuple:
    return (loc.uri, loc.row_group or 0, loc.row or 0, loc.offset or 0)


def shard_pass_shard(
    *, run_id: int, shard_id: int, encoder=None, num_workers: int | None = None, progress=None
) -> str:
    """Pass over one shard for run ``run_id``. Returns what happened ("passed", "already done", ...)."""
    import numpy as np

    from scoring.encoders import encoder_load
    from scoring.features import embedding_cache_for
    from scoring.pipeline import texts_embed
    from scoring.shard_features import shard_features_write

    run = ShardPassRun.objects.get(pk=run_id)
    if run.status in FINISHED:
        return f"run {run.status}"
    row = ShardPassShard.objects.select_related("shard").get(run=run, shard_id=shard_id)
    if row.done:
        return "already done"
    encoder = encoder or encoder_load(run.encoder)
    if encoder.fingerprint != run.encoder_fingerprint:
        shard_pass_fail(
            run_id=run.pk,
            error=(
                f"The weights of encoder {run.encoder!r} changed after shard pass {run.pk} started "
                f"(fingerprint {run.encoder_fingerprint or '(none)'} -> {encoder.fingerprint or '(none)'}). "
                "Start a new shard pass for the new weights."
            ),
        )
        return "failed: encoder weights changed"
    started = time.monotonic()
    beat = Heartbeat(model=ShardPassRun, run_id=run.pk)
    beat()
    logger.info("shard pass %s: shard %s started", run.pk, shard_id)

    shard = row.shard
    rows = list(Image.objects.filter(shard_id=shard_id).values_list("pk", "status", *LOCATOR_FIELDS))
    located = [(pk, status, locator_from_values(*loc)) for pk, status, *loc in rows]
    unreachable = _shard_unreachable(shard, located)
    if unreachable:
        return _shard_failed(run=run, row=row, error=unreachable)
    located.sort(key=lambda r: _location_key(r[2]))
    status_of = {pk: status for pk, status, _ in located}
    cache = embedding_cache_for(encoder)
    outcome = shard_images_pass(
        encoder=encoder,
        images=[(pk, loc.sha256 or "", loc) for pk, _, loc in located],
        cache=cache,
        num_workers=num_workers,
        progress=lambda n: (beat(), progress(n) if progress else None),
    )

    # Captions: every pair of the shard's images; each distinct text embedded at most once.
    captions = list(
        Caption.objects.filter(image__shard_id=shard_id)
        .order_by("pk")
        .values_list("pk", "image_id", "text", "text_sha256")
    )
    text_of = {tsha: text for _, _, text, tsha in captions}
    text_shas = list(text_of)
    text_feats = np.zeros((len(text_shas), encoder.text_feature_dim), dtype=np.float16)
    truncated_of: dict[str, bool] = {}
    if text_shas:
        cached, found = cache.get_texts(text_shas)
        if cached is not None:
            text_feats[found] = cached[found]
        missing = [i for i, ok in enumerate(found) if not ok]
        if missing:
            feats, _ = texts_embed(encoder, [text_of[text_shas[i]] for i in missing])
            cache.put_texts([text_shas[i] for i in missing], feats)
            text_feats[missing] = feats.astype(np.float16)
        truncated_of = dict(
            zip(text_shas, encoder.text_truncated([text_of[s] for s in text_shas]), strict=True)
        )
    text_row = {sha: i for i, sha in enumerate(text_shas)}
    beat()

    # By-shard features: the readable images (pk ascending) and their captions.
    good_ids = sorted(outcome.features)
    image_row = {pk: i for i, pk in enumerate(good_ids)}
    image_feats = (
        np.stack([outcome.features[pk] for pk in good_ids]).astype(np.float16)
        if good_ids
        else np.zeros((0, encoder.image_feature_dim), dtype=np.float16)
    )
    kept = [c for c in captions if c[1] in image_row]
    kept_texts = (
        text_feats[[text_row[c[3]] for c in kept]]
        if kept
        else np.zeros((0, encoder.text_feature_dim), dtype=np.float16)
    )
    shard_features_write(
        settings.EMBEDDING_CACHE_DIR,
        encoder.name,
        encoder.fingerprint,
        shard_id,
        image_ids=np.array(good_ids, dtype=np.int64),
        images=image_feats,
        caption_ids=np.array([c[0] for c in kept], dtype=np.int64),
        texts=kept_texts,
        caption_image_row=np.array([image_row[c[1]] for c in kept], dtype=np.int32),
        meta={"shard_pass_run": run.pk, "unreadable_image_ids": sorted(outcome.errors)},
    )

    # CLIPScore from the float16 rows (what the cache holds), so a rescore from the cache is identical.
    d = encoder.embed_dim
    if kept:
        img = image_feats[[image_row[c[1]] for c in kept], :d].astype(np.float32)
        txt = kept_texts[:, :d].astype(np.float32)
        cosine = np.einsum("nd,nd->n", img, txt)
    else:
        cosine = np.zeros(0)
    clip = clipscore(cosine)
    now = timezone.now()
    common = {
        "encoder": run.encoder,
        "encoder_fingerprint": run.encoder_fingerprint,
        "reward_model_version": 0,
        "updated_at": now,
    }
    scores = [
        Score(
            caption_id=c[0],
            cosine=float(cosine[i]),
            clipscore=float(clip[i]),
            reward=None,
            criteria=None,
            uncertainty=None,
            truncated=truncated_of.get(c[3], False),
            error="",
            **common,
        )
        for i, c in enumerate(kept)
    ]
    failed = [c for c in captions if c[1] in outcome.errors]
    scores += [
        Score(
            caption_id=c[0],
            truncated=truncated_of.get(c[3], False),
            error=outcome.errors[c[1]][:500],
            **common,
        )
        for c in failed
    ]
    return _shard_commit(
        run=run,
        row=row,
        outcome=outcome,
        status_of=status_of,
        scores=scores,
        failed_pairs=len(failed),
        now=now,
        seconds=time.monotonic() - started,
    )


def _shard_unreachable(shard: Shard, located: list) -> str:
    """Why the whole shard cannot be read (its file is gone, its store unreachable), or ''. Such a shard
    is reported, not turned into thousands of 'unreadable' images: the cause is usually transient."""
    from pool.storage import stat

    uris = {loc.uri for _, _, loc in located if loc.offset is not None or loc.row_group is not None}
    for uri in sorted(uris):
        try:
            stat(uri)
        except StorageError as exc:
            return f"shard {shard.pk} ({shard.uri}) cannot be read: {exc}"
    return ""


def _shard_failed(*, run: ShardPassRun, row: ShardPassShard, error: str) -> str:
    logger.warning("shard pass %s: %s", run.pk, error)
    now = timezone.now()
    with transaction.atomic():
        marked = ShardPassShard.objects.filter(pk=row.pk, done=False).update(
            done=True, error=error[:5000], finished_at=now
        )
        if marked:
            ShardPassRun.objects.filter(pk=run.pk).update(
                shards_done=F("shards_done") + 1,
                shards_failed=F("shards_failed") + 1,
                total=F("total") - row.planned,
                heartbeat_at=now,
            )
    if marked:
        shard_pass_finish_if_complete(run.pk)
    return "shard unreadable" if marked else "already done"


def _shard_commit(
    *,
    run: ShardPassRun,
    row: ShardPassShard,
    outcome: ShardOutcome,
    status_of: dict[int, str],
    scores: list[Score],
    failed_pairs: int,
    now,
    seconds: float,
) -> str:
    with transaction.atomic():
        # Cancelled while we computed: keep nothing, so a cancelled run's numbers stay as they were.
        if ShardPassRun.objects.filter(pk=run.pk, status=RunStatus.CANCELLED).exists():
            return "cancelled"
        # Flip first: a second delivery of this shard (a worker killed after the commit, before the
        # acknowledgement) finds it done and writes nothing.
        marked = ShardPassShard.objects.filter(pk=row.pk, done=False).update(
            done=True,
            pairs=len(scores),
            images=len(outcome.image_ids),
            unreadable=len(outcome.errors),
            failed=failed_pairs,
            error="",
            seconds=round(seconds, 3),
            finished_at=now,
        )
        if not marked:
            return "already done"
        _images_write(outcome=outcome, status_of=status_of, now=now)
        _scores_upsert(scores)
        ShardPassRun.objects.filter(pk=run.pk).update(
            done=F("done") + len(scores),
            # The plan counted the shard's indexed samples; the pairs found now are what counts.
            total=F("total") + len(scores) - row.planned,
            shards_done=F("shards_done") + 1,
            images_done=F("images_done") + len(outcome.image_ids),
            unreadable_images=F("unreadable_images") + len(outcome.errors),
            failed_pairs=F("failed_pairs") + failed_pairs,
            heartbeat_at=now,
        )
    shard_pass_finish_if_complete(run.pk)
    return "passed"


# One statement per shard on PostgreSQL (arrays unnested into rows): Django's bulk_update builds a
# CASE WHEN per row and field, which cost more CPU per image than its decode (benchmarks/shard_pass.py).


def _images_write(*, outcome: ShardOutcome, status_of: dict[int, str], now) -> None:
    """Image rows as ``pool.inspection`` writes them; a curator's ``rejected`` stands."""
    ok = outcome.infos
    bad = outcome.errors
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(Image._meta.db_table)
        with connection.cursor() as cursor:
            if ok:
                ids = list(ok)
                cursor.execute(
                    f"UPDATE {table} AS i SET phash = v.phash, width = v.width, height = v.height, "
                    "format = v.format, inspected_at = %s, "
                    # An image an earlier pass found unreadable that reads now (the file was repaired).
                    "status = CASE WHEN i.status = %s THEN %s ELSE i.status END, "
                    "status_reason = CASE WHEN i.status = %s THEN '' ELSE i.status_reason END "
                    "FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::int[], %s::text[]) "
                    "AS v(id, phash, width, height, format) WHERE i.id = v.id",
                    [
                        now,
                        ImageStatus.UNREADABLE,
                        ImageStatus.OK,
                        ImageStatus.UNREADABLE,
                        ids,
                        [ok[pk][0] for pk in ids],
                        [ok[pk][1] for pk in ids],
                        [ok[pk][2] for pk in ids],
                        [ok[pk][3] for pk in ids],
                    ],
                )
            if bad:
                ids = list(bad)
                cursor.execute(
                    f"UPDATE {table} AS i SET status = CASE WHEN i.status = %s THEN i.status ELSE %s END, "
                    "status_reason = v.reason, inspected_at = %s "
                    "FROM unnest(%s::bigint[], %s::text[]) AS v(id, reason) WHERE i.id = v.id",
                    [ImageStatus.REJECTED, ImageStatus.UNREADABLE, now, ids, [bad[pk][:255] for pk in ids]],
                )
        return
    if ok:
        Image.objects.bulk_update(
            [
                Image(pk=pk, phash=phash, width=w, height=h, format=fmt, inspected_at=now)
                for pk, (phash, w, h, fmt) in ok.items()
            ],
            ["phash", "width", "height", "format", "inspected_at"],
            batch_size=1000,
        )
        Image.objects.filter(pk__in=list(ok), status=ImageStatus.UNREADABLE).update(
            status=ImageStatus.OK, status_reason=""
        )
    if bad:
        Image.objects.bulk_update(
            [
                Image(
                    pk=pk,
                    status=ImageStatus.REJECTED
                    if status_of[pk] == ImageStatus.REJECTED
                    else ImageStatus.UNREADABLE,
                    status_reason=reason[:255],
                    inspected_at=now,
                )
                for pk, reason in bad.items()
            ],
            ["status", "status_reason", "inspected_at"],
            batch_size=1000,
        )


SCORE_KEY = ["caption", "encoder", "encoder_fingerprint", "reward_model_version"]
# Per-pair columns of a shard's scores, with their PostgreSQL array types.
_SCORE_ARRAYS = {
    "caption_id": "bigint",
    "cosine": "float8",
    "clipscore": "float8",
    "truncated": "boolean",
    "error": "text",
}


def _scores_upsert(scores: list[Score]) -> None:
    """Upsert on the key scoring chunks use (``Score.score_unique_per_weights``)."""
    if not scores:
        return
    if connection.vendor != "postgresql":
        Score.objects.bulk_create(
            scores,
            batch_size=1000,
            update_conflicts=True,
            unique_fields=SCORE_KEY,
            update_fields=SCORE_UPDATE_FIELDS,
        )
        return
    quote = connection.ops.quote_name
    first = scores[0]
    columns, select, params = [], [], []
    for f in Score._meta.concrete_fields:
        if f.primary_key:
            continue
        columns.append(quote(f.column))
        if f.attname in _SCORE_ARRAYS:
            select.append(f"v.{f.attname}")
        else:
            # The same for every row of the shard (identity, time, the reward fields left empty); a
            # field added to Score later takes what the row object holds (its default).
            select.append(f"%s::{f.db_type(connection)}")
            params.append(f.get_db_prep_save(getattr(first, f.attname), connection))
    arrays = [[getattr(score, name) for score in scores] for name in _SCORE_ARRAYS]
    arrays[list(_SCORE_ARRAYS).index("truncated")] = [
        bool(t) for t in arrays[list(_SCORE_ARRAYS).index("truncated")]
    ]
    unnest = ", ".join(f"%s::{kind}[]" for kind in _SCORE_ARRAYS.values())
    key = ", ".join(quote(Score._meta.get_field(name).column) for name in SCORE_KEY)
    updates = ", ".join(
        f"{quote(Score._meta.get_field(name).column)} = EXCLUDED.{quote(Score._meta.get_field(name).column)}"
        for name in SCORE_UPDATE_FIELDS
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(Score._meta.db_table)} ({', '.join(columns)}) SELECT {', '.join(select)} "
            f"FROM unnest({unnest}) AS v({', '.join(_SCORE_ARRAYS)}) "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}",
            params + arrays,
        )


def shard_pass_sync(*, run: ShardPassRun, progress=None, num_workers: int | None = None) -> ShardPassRun:
    """Every pending shard in this process (``shard_pass --sync``, benchmarks, tests). ``progress``
    gets the run after each shard."""
    from scoring.encoders import EncoderError, encoder_load

    try:
        encoder = encoder_load(run.encoder)
    except EncoderError as exc:
        shard_pass_fail(run_id=run.pk, error=str(exc))
        raise
    for shard_id in shard_pass_begin(run=run):
        shard_pass_shard(run_id=run.pk, shard_id=shard_id, encoder=encoder, num_workers=num_workers)
        if progress is not None:
            progress(ShardPassRun.objects.get(pk=run.pk))
    run.refresh_from_db()
    return run
