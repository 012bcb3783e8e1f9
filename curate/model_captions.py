"""Rewrite instead of drop (AITQE): a multimodal judge rewrites the captions it scored below a bar.

A web pool is full of good images with poor alt text; dropping them loses the image, keeping them keeps
the noise. A rewrite run asks the judge (``vlm:<dir>``, the one that scored the band) for a caption
grounded in the image and the original, and stores it as a NEW caption (source ``model``, parent = the
original; the original is never changed). Each rewrite is then judged by the same model (MLM-Filter's
four metrics) and scored with the pool's encoder (a scoring run over the new captions), so filter runs
weigh it like any other pair; with a campaign, original and rewrite go to annotators side by side, so
people check what the model wrote before training trusts it.

Idempotent: an original that already has a model rewrite is skipped, so a rerun after a killed worker
rewrites only what is left. Cancel is checked between batches.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Exists, OuterRef, Q, Subquery
from django.utils import timezone

from curate.models import RewriteRun
from curate.rewrite import RewriteRefused, rewrite_caption_create, rewrite_send_to_annotation
from pool.locate import image_locator
from pool.models import Caption, CaptionSource, CaptionStatus, ImageStatus, RunStatus, text_sha256
from scoring.active_model import loop_encoder_get
from scoring.encoder_names import vlm_name_check
from scoring.models import VLM_METRICS, VlmScore

logger = logging.getLogger(__name__)

# Pairs per judge call: generation holds a batch's key-value cache, and a killed worker loses at most this.
BATCH = 8


def rewrite_run_start(
    *,
    scorer: str,
    below: dict[str, float],
    limit: int = 500,
    campaign=None,
    user=None,
    enqueue: bool = True,
) -> RewriteRun:
    """Queue a rewrite run for the captions ``scorer`` judged below ``below`` (any metric, e.g.
    ``{"itm": 50}``), worst first, at most ``limit``. ``ValueError`` with the reason on bad input."""
    vlm_name_check(scorer)
    if not below:
        raise ValueError("Say which pairs to rewrite: a bar on a judge metric, e.g. itm below 50.")
    for key, value in below.items():
        if key not in VLM_METRICS or not 0 <= float(value) <= 100:
            raise ValueError(
                f"A bar is one of {', '.join(VLM_METRICS)} with a value in 0-100, not {key}={value}."
            )
    if limit < 1:
        raise ValueError("limit must be at least 1.")
    run = RewriteRun.objects.create(
        scorer=scorer,
        campaign=campaign,
        params={"below": {k: float(v) for k, v in below.items()}, "limit": int(limit)},
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    if enqueue:
        from curate.tasks import rewrite_run_task

        # The judge is a GPU job.
        transaction.on_commit(lambda: rewrite_run_task.apply_async(args=[run.pk], queue="gpu"))
    return run


def rewrite_candidates(*, run: RewriteRun, fingerprint: str):
    """Usable captions the judge scored below the bar, without a model rewrite yet, worst ITM first."""
    below = Q()
    for key, value in run.params["below"].items():
        below |= Q(**{f"{key}__lt": value})
    judged_low = VlmScore.objects.filter(
        below, caption=OuterRef("pk"), scorer_fingerprint=fingerprint, error=""
    )
    rewritten = Caption.objects.filter(parent=OuterRef("pk"), source=CaptionSource.MODEL)
    itm = VlmScore.objects.filter(caption=OuterRef("pk"), scorer_fingerprint=fingerprint).values("itm")[:1]
    return (
        Caption.objects.filter(status=CaptionStatus.OK, image__status=ImageStatus.OK)
        .exclude(source=CaptionSource.MODEL)
        .filter(Exists(judged_low))
        .exclude(Exists(rewritten))
        .annotate(judge_itm=Subquery(itm))
        .order_by("judge_itm", "id")
    )


def model_caption_create(*, original: Caption, text: str) -> Caption:
    """A model-written caption of ``original``'s image (source ``model``, parent = the original)."""
    return rewrite_caption_create(original=original, text=text, source=CaptionSource.MODEL)


def _cancelled(run: RewriteRun) -> bool:
    return RewriteRun.objects.filter(pk=run.pk, status=RunStatus.CANCELLED).exists()


def rewrite_run_execute(*, run: RewriteRun, scorer=None, score_new: bool = True) -> RewriteRun:
    """Rewrite, judge and (optionally) queue scoring of the run's candidates. Worker side: loads the judge."""
    from scoring.vlm import vlm_load
    from scoring.vlm_inference import image_open

    if run.status in (RunStatus.SUCCEEDED, RunStatus.CANCELLED):
        return run
    scorer = scorer or vlm_load(run.scorer)
    RewriteRun.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING,
        started_at=run.started_at or timezone.now(),
        scorer_fingerprint=scorer.fingerprint,
    )
    candidates = list(
        rewrite_candidates(run=run, fingerprint=scorer.fingerprint).select_related("image")[
            : run.params["limit"]
        ]
    )
    RewriteRun.objects.filter(pk=run.pk).update(total=len(candidates))
    summary = dict(run.summary or {})
    counts = summary.setdefault("counts", {})
    created_ids: list[int] = list(summary.get("created_ids", []))
    for start in range(0, len(candidates), BATCH):
        if _cancelled(run):
            break
        batch = candidates[start : start + BATCH]
        opened = [(caption, *image_open(image_locator(caption.image))) for caption in batch]
        readable = [(caption, img) for caption, img, why in opened if img is not None]
        for _, _, why in opened:
            if why:
                counts["unreadable_image"] = counts.get("unreadable_image", 0) + 1
        results = scorer.rewrite_captions([img for _, img in readable], [c.text for c, _ in readable])
        new: list[tuple[Caption, Caption, object]] = []
        for (original, img), result in zip(readable, results, strict=True):
            if result.error or not result.text:
                counts["model_error"] = counts.get("model_error", 0) + 1
                continue
            try:
                new.append((original, model_caption_create(original=original, text=result.text), img))
            except RewriteRefused as exc:
                key = (
                    "identical_or_duplicate"
                    if "identical" in str(exc) or "already" in str(exc)
                    else "refused"
                )
                counts[key] = counts.get(key, 0) + 1
        if new:
            judged = scorer.score_pairs([img for _, _, img in new], [c.text for _, c, _ in new])
            now = timezone.now()
            VlmScore.objects.bulk_create(
                [
                    VlmScore(
                        caption=caption,
                        scorer=run.scorer,
                        scorer_fingerprint=scorer.fingerprint,
                        itm=res.itm,
                        odf=res.odf,
                        ctq=res.ctq,
                        su=res.su,
                        truncated=bool(res.truncated),
                        error=(res.error or "")[:500],
                        updated_at=now,
                    )
                    for (_, caption, _), res in zip(new, judged, strict=True)
                ],
                update_conflicts=True,
                unique_fields=["caption", "scorer_fingerprint"],
                update_fields=["itm", "odf", "ctq", "su", "truncated", "error", "updated_at"],
            )
            if run.campaign_id is not None:
                for original, caption, _ in new:
                    rewrite_send_to_annotation(campaign=run.campaign, original=original, rewritten=caption)
            created_ids += [caption.id for _, caption, _ in new]
            counts["rewritten"] = counts.get("rewritten", 0) + len(new)
        summary["created_ids"] = created_ids
        RewriteRun.objects.filter(pk=run.pk).update(
            done=min(start + len(batch), len(candidates)), summary=summary
        )
    if score_new and created_ids:
        from scoring.services import scoring_run_start

        scoring = scoring_run_start(encoder=loop_encoder_get(), caption_ids=created_ids)
        summary["scoring_run_id"] = scoring.pk
    status = RunStatus.CANCELLED if _cancelled(run) else RunStatus.SUCCEEDED
    RewriteRun.objects.filter(pk=run.pk).exclude(status=RunStatus.CANCELLED).update(
        status=status, finished_at=timezone.now(), summary=summary
    )
    run.refresh_from_db()
    return run


def rewrite_run_fail(*, run_id: int, error: str) -> None:
    RewriteRun.objects.filter(pk=run_id).exclude(
        status__in=[RunStatus.SUCCEEDED, RunStatus.CANCELLED]
    ).update(status=RunStatus.FAILED, error=error[:5000], finished_at=timezone.now())


# --- metadata expansion (MagicLens) -------------------------------------------------------------


def image_descriptions_add(*, scorer, image_ids: list[int]) -> dict:
    """Per image, a model-written description as one more candidate caption (source ``model``, no
    parent): annotation tasks and exports then carry it beside the alt text. Worker side; idempotent
    (an image that already has a model description is skipped). Returns counts."""
    from scoring.vlm_inference import image_open

    described = Caption.objects.filter(
        image_id=OuterRef("pk"), source=CaptionSource.MODEL, parent__isnull=True
    )
    from pool.models import Image

    images = list(Image.objects.filter(id__in=image_ids, status=ImageStatus.OK).exclude(Exists(described)))
    counts = {"described": 0, "unreadable_image": 0, "empty": 0, "duplicate": 0}
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH]
        opened = [(image, *image_open(image_locator(image))) for image in batch]
        readable = [(image, img) for image, img, _ in opened if img is not None]
        counts["unreadable_image"] += len(batch) - len(readable)
        texts = scorer.describe_images([img for _, img in readable])
        for (image, _), text in zip(readable, texts, strict=True):
            cleaned = " ".join((text or "").split())
            if not cleaned:
                counts["empty"] += 1
                continue
            _, created = Caption.objects.get_or_create(
                image=image,
                text_sha256=text_sha256(cleaned),
                defaults={"text": cleaned, "source": CaptionSource.MODEL, "status": CaptionStatus.OK},
            )
            counts["described" if created else "duplicate"] += 1
    return counts
