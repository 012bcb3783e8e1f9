"""Caption rewrites: a curator's edit or an accepted suggestion becomes a new caption (source ``rewrite``)
linked to its original, which stays in the pool untouched.

Suggestions come from a pluggable generator, run as a Celery task (``curate.tasks``):

- ``LOUPE_VLM_JUDGE`` names a multimodal judge (``vlm:<dir>``): it rewrites from the image and the
  caption (AITQE); the same model as the rewrite runs of ``curate.model_captions``.
- ``LOUPE_REWRITE_MODEL_DIR`` (environment or Django setting) names a local transformers checkpoint,
  seq2seq (T5/BART-like) or causal; nothing is downloaded.
- Otherwise a template expands the caption with the scoring encoder's content labels for the image
  (MagicLens-style metadata expansion: "a tabby cat" -> "a tabby cat, with a laptop"); when the encoder
  cannot run here, keywords from the image's other captions stand in for the labels.

Suggestions are small JSON files under ``DATA_DIR/rewrite_suggestions`` so that the web process can read
what the worker wrote, on one machine or on a shared volume.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from pool.locate import image_locator
from pool.models import Caption, CaptionSource, CaptionStatus, text_sha256
from scoring.active_model import loop_encoder_get

logger = logging.getLogger(__name__)

STOPWORDS = set(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "on",
        "in",
        "at",
        "to",
        "with",
        "for",
        "from",
        "by",
        "is",
        "are",
        "was",
        "were",
        "be",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "photo",
        "image",
        "picture",
        "drawing",
        "clipart",
        "clip",
        "art",
        "illustration",
        "icon",
        "vector",
        "svg",
        "png",
        "jpg",
        "view",
        "some",
    ]
)


class RewriteRefused(ValueError):
    """A rewrite that cannot be saved; the message says why, for the curator."""


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def rewrite_validate(*, original: Caption, text: str) -> str:
    """The cleaned rewrite text, or RewriteRefused with a reason a curator understands."""
    cleaned = " ".join((text or "").split())
    if not cleaned:
        raise RewriteRefused("The rewrite is empty: type the new caption, or reject the pair instead.")
    if _normalise(cleaned) == _normalise(original.text):
        raise RewriteRefused(
            "The rewrite is identical to the original caption: change it, or accept the pair instead."
        )
    limit = getattr(settings, "LOUPE_MAX_CAPTION_CHARS", 2000)
    if len(cleaned) > limit:
        raise RewriteRefused(f"The rewrite is {len(cleaned)} characters long; the limit is {limit}.")
    if Caption.objects.filter(image_id=original.image_id, text_sha256=text_sha256(cleaned)).exists():
        raise RewriteRefused("This image already has a caption with exactly this text.")
    return cleaned


def rewrite_caption_create(*, original: Caption, text: str, source: str = CaptionSource.REWRITE) -> Caption:
    """Create the rewritten caption (same image, parent = original). The original is not modified.
    ``source`` says who wrote it: a curator (``rewrite``) or the multimodal judge (``model``)."""
    cleaned = rewrite_validate(original=original, text=text)
    try:
        with transaction.atomic():
            return Caption.objects.create(
                image_id=original.image_id,
                text=cleaned,
                text_sha256=text_sha256(cleaned),
                source=source,
                parent=original,
                status=CaptionStatus.OK,
            )
    except IntegrityError as exc:  # a concurrent identical rewrite won the race
        raise RewriteRefused("This image already has a caption with exactly this text.") from exc


def rewrite_send_to_annotation(*, campaign, original: Caption, rewritten: Caption):
    """Put the rewrite next to its original in a new annotation task, so people compare the two."""
    try:
        from annotate.services import campaign_task_for_rewrite
    except ImportError:
        campaign_task_for_rewrite = None
    if campaign_task_for_rewrite is not None:
        return campaign_task_for_rewrite(
            campaign=campaign, original_caption=original, rewritten_caption=rewritten
        )

    from annotate.models import Task, TaskCaption

    # Fill the task up to the campaign's size with the image's other usable captions, original first.
    others = list(
        Caption.objects.filter(image_id=original.image_id, status=CaptionStatus.OK, image__status="ok")
        .exclude(id__in=[original.id, rewritten.id])
        .order_by("id")
        .values_list("id", flat=True)[: max(0, campaign.captions_per_task - 2)]
    )
    with transaction.atomic():
        # Above the usual priorities so the comparison is seen soon.
        task = Task.objects.create(campaign=campaign, image_id=original.image_id, priority=1.0)
        TaskCaption.objects.bulk_create(
            [
                TaskCaption(task=task, caption_id=cid, position=position)
                for position, cid in enumerate([original.id, rewritten.id, *others])
            ]
        )
    return task


# --- suggestions -------------------------------------------------------------------------------


def _keywords(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-zA-Z][a-zA-Z-]{2,}", text.lower()) if w not in STOPWORDS]


def _label_phrase(label: str) -> str:
    label = label.split(",")[0].strip().replace("_", " ")
    article = "an" if label[:1].lower() in "aeiou" else "a"
    return f"{article} {label}"


def _content_labels(caption: Caption, k: int) -> list[str]:
    """Labels the scoring encoder sees in the image; [] when the encoder is not available here."""
    try:
        from scoring.encoders import encoder_load
        from scoring.features import caption_features
    except ImportError:
        return []
    encoder_name = loop_encoder_get()
    try:
        features = caption_features(encoder=encoder_name, caption_ids=[caption.id])
        image_features = features[0] if isinstance(features, tuple) else features["image"]
        labels = encoder_load(encoder_name).content_labels(image_features, k)
    except Exception as exc:  # weights or cache missing: fall back to the other captions
        logger.info("content labels unavailable for caption %s (%s); using keywords", caption.id, exc)
        return []
    first = labels[0] if labels and isinstance(labels[0], list | tuple) else labels
    return [str(item[0] if isinstance(item, list | tuple) else item) for item in first][:k]


def template_suggestion(*, caption: Caption, k: int = 2) -> tuple[str, str]:
    """(suggestion, where its additions came from) by the metadata-expansion template."""
    base = caption.text.strip().rstrip(".")
    present = set(_keywords(base))
    labels = [label for label in _content_labels(caption, k + 2) if not set(_keywords(label)) <= present]
    origin = "encoder content labels"
    extras = [_label_phrase(label) for label in labels[:k]]
    if not extras:
        origin = "keywords of the image's other captions"
        counts = Counter(
            word
            for text in Caption.objects.filter(image_id=caption.image_id)
            .exclude(id=caption.id)
            .values_list("text", flat=True)[:50]
            for word in dict.fromkeys(_keywords(text))
        )
        extras = [word for word, _ in counts.most_common() if word not in present][:k]
    if not base.lower().startswith(("a photo", "an image", "a picture", "a drawing")):
        base = f"a picture of {base[:1].lower()}{base[1:]}"
    if not extras:
        return base, "template only (no labels or keywords found)"
    joined = extras[0] if len(extras) == 1 else ", ".join(extras[:-1]) + f" and {extras[-1]}"
    return f"{base}, with {joined}", origin


_MODEL_CACHE: dict[str, object] = {}


def rewrite_model_dir() -> str | None:
    return os.environ.get("LOUPE_REWRITE_MODEL_DIR") or getattr(settings, "LOUPE_REWRITE_MODEL_DIR", None)


def model_suggestion(*, caption: Caption, model_dir: str) -> str:
    """One rewrite from a local transformers checkpoint (seq2seq or causal), greedy decoding."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if model_dir not in _MODEL_CACHE:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        loader = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = loader.from_pretrained(model_dir, local_files_only=True).eval()
        _MODEL_CACHE[model_dir] = (tokenizer, model, config.is_encoder_decoder)
    tokenizer, model, seq2seq = _MODEL_CACHE[model_dir]
    prompt = f"Rewrite this image caption to be accurate, complete and specific: {caption.text}"
    inputs = tokenizer(prompt, return_tensors="pt", truncation=True, max_length=256)
    output = model.generate(**inputs, max_new_tokens=60, do_sample=False)
    if not seq2seq:
        output = output[:, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(output[0], skip_special_tokens=True).strip()


def _suggestion_path(caption_id: int) -> Path:
    return Path(settings.DATA_DIR) / "rewrite_suggestions" / f"{int(caption_id)}.json"


def rewrite_suggestion_get(*, caption_id: int) -> dict | None:
    path = _suggestion_path(caption_id)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def judge_suggestion(*, caption: Caption, judge: str) -> str:
    """One rewrite from the multimodal judge, grounded in the image and the caption (AITQE)."""
    from scoring.vlm import vlm_load
    from scoring.vlm_inference import image_open

    image, why = image_open(image_locator(caption.image))
    if image is None:
        raise ValueError(why)
    result = vlm_load(judge).rewrite_captions([image], [caption.text])[0]
    if result.error or not result.text:
        raise ValueError(result.error or "the judge wrote nothing")
    return result.text


def rewrite_suggest(*, caption: Caption) -> dict:
    """Generate and store a suggestion for ``caption``; returns {"text", "generator", "detail"}."""
    model_dir = rewrite_model_dir()
    judge = getattr(settings, "LOUPE_VLM_JUDGE", None)
    result: dict
    if judge:
        try:
            result = {
                "text": judge_suggestion(caption=caption, judge=judge),
                "generator": "judge",
                "detail": judge,
            }
        except Exception as exc:  # a broken judge must not block curators: say so and use the template
            logger.warning("judge %s could not rewrite caption %s: %s", judge, caption.pk, exc)
            text, origin = template_suggestion(caption=caption)
            result = {"text": text, "generator": "template", "detail": f"judge failed ({exc}); {origin}"}
    elif model_dir:
        try:
            text = model_suggestion(caption=caption, model_dir=model_dir)
            result = {"text": text, "generator": "model", "detail": model_dir}
        except Exception as exc:  # a broken checkpoint must not block curators: say so and use the template
            logger.warning("rewrite model at %s failed: %s", model_dir, exc)
            text, origin = template_suggestion(caption=caption)
            result = {"text": text, "generator": "template", "detail": f"model failed ({exc}); {origin}"}
    else:
        text, origin = template_suggestion(caption=caption)
        result = {"text": text, "generator": "template", "detail": origin}
    result["caption_id"] = caption.id
    path = _suggestion_path(caption.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(result, handle)
    os.replace(tmp, path)
    return result
