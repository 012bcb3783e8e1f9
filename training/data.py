"""The Django side of the training data: a campaign's judgments -> TrainingData over cached features.

Features come from ``scoring.features.caption_features`` (the embedding cache), so retraining never
re-encodes the pool. The split is by image (a hash of its sha256), never by pair.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from annotate.models import Campaign, Judgment
from pool.models import Caption
from training.pairs import JudgmentRecord, TrainingData, human_agreement, image_split, training_data_build

# Below this many judgments a reward model only memorises; a campaign of 4-caption tasks gives six
# pairs per judgment, so 30 judgments is 180 pairs, of which ~70% train.
DEFAULT_MIN_JUDGMENTS = 30


class _JudgmentDigest:
    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.last_id = 0

    def update(self, data: bytes) -> None:
        self.sha.update(data)


class TrainingDataError(ValueError):
    """The campaign's judgments cannot make a training set; the message says what is missing."""


class EncoderMismatchError(TrainingDataError):
    """Features and a checkpoint come from different encoders."""


def min_judgments() -> int:
    return int(getattr(settings, "LOUPE_REWARD_MIN_JUDGMENTS", DEFAULT_MIN_JUDGMENTS))


def split_fractions() -> tuple[float, float]:
    """(validation, test) shares of the images."""
    return (
        float(getattr(settings, "LOUPE_REWARD_VALIDATION_FRACTION", 0.1)),
        float(getattr(settings, "LOUPE_REWARD_TEST_FRACTION", 0.2)),
    )


@dataclass
class LoadedData:
    data: TrainingData
    n_judgments: int
    n_pairs: int
    test_judgments: list[JudgmentRecord]
    dropped_captions: list[int]
    # Lineage: the exact judgments read (sha256 over their ids, rankings and ratings; the newest id)
    # and the weights of the encoder whose features the heads see.
    judgments_sha256: str = ""
    last_judgment_id: int = 0
    encoder_fingerprint: str = ""


def judgment_records(*, campaign: Campaign, digest=None) -> list[JudgmentRecord]:
    """Every judgment of the campaign as plain records (streamed: never all rows as model instances).

    ``digest`` (a hashlib object) is fed each judgment's id, ranking and ratings, in id order, so a
    model records exactly which judgments it was trained on; ``digest.last_id`` is then the newest."""
    rows = (
        Judgment.objects.filter(task__campaign=campaign)
        .order_by("id")
        .values_list("id", "task_id", "user_id", "ranking", "ratings", "task__image__sha256")
    )
    records = []
    for judgment_id, task_id, user_id, ranking, ratings, sha in rows.iterator(chunk_size=2000):
        if digest is not None:
            digest.update(json.dumps([judgment_id, ranking, ratings], sort_keys=True).encode() + b"\n")
            digest.last_id = judgment_id
        records.append(JudgmentRecord(task_id, user_id, ranking, ratings or {}, sha))
    return records


def _without(ranking, missing: set[int]) -> list[list[int]]:
    tiers = [[int(c) for c in tier if int(c) not in missing] for tier in ranking]
    return [tier for tier in tiers if tier]


def encoder_embed_dim(encoder: str) -> int:
    from scoring.encoders import encoder_load

    return int(encoder_load(encoder).embed_dim)


def training_data_load(*, campaign: Campaign, encoder: str) -> LoadedData:
    """Judgments -> pairs and ratings per split, with features of ``encoder``; clear errors if unusable."""
    from scoring.encoder_names import encoder_fingerprint
    from scoring.features import caption_features

    digest = _JudgmentDigest()
    records = judgment_records(campaign=campaign, digest=digest)
    needed = min_judgments()
    if len(records) < needed:
        raise TrainingDataError(
            f"Campaign {campaign.name!r} has {len(records)} judgments; training a reward model needs at "
            f"least {needed}. Collect {needed - len(records)} more."
        )
    validation_fraction, test_fraction = split_fractions()
    held_out = {image_split(r.image_key, validation_fraction, test_fraction) for r in records}
    if "test" not in held_out:
        images = len({r.image_key for r in records})
        raise TrainingDataError(
            f"Campaign {campaign.name!r} has no held-out images: all {images} judged images fell into "
            f"the training split ({test_fraction:.0%} of images are held out by hash). Judge tasks on "
            "more images so the model can be evaluated."
        )
    caption_ids = sorted({int(c) for r in records for tier in r.ranking for c in tier})
    fingerprint = encoder_fingerprint(encoder)
    image_feats, text_feats, feature_ids = caption_features(encoder=encoder, caption_ids=caption_ids)
    if encoder_fingerprint(encoder) != fingerprint:
        raise TrainingDataError(
            f"The weights of encoder {encoder!r} were replaced while the training features were read; "
            "train again."
        )
    image_feats = np.asarray(image_feats, np.float32)
    text_feats = np.asarray(text_feats, np.float32)
    feature_ids = [int(c) for c in feature_ids]
    if len(feature_ids) != len(image_feats) or len(feature_ids) != len(text_feats):
        raise TrainingDataError(
            f"caption_features({encoder!r}) returned {len(feature_ids)} ids for {len(image_feats)} image "
            f"and {len(text_feats)} text rows."
        )
    missing = set(caption_ids) - set(feature_ids)
    if missing:
        # Captions whose image cannot be read drop out of the rankings; the rest of each ranking stays.
        records = [
            JudgmentRecord(r.task_id, r.user_id, _without(r.ranking, missing), r.ratings, r.image_key)
            for r in records
        ]
        records = [r for r in records if sum(len(t) for t in r.ranking) >= 2]
    sha_of = dict(Caption.objects.filter(pk__in=feature_ids).values_list("pk", "image__sha256"))
    data = training_data_build(
        judgments=records,
        caption_ids=feature_ids,
        row_image_keys=[sha_of[c] for c in feature_ids],
        image_feats=image_feats,
        text_feats=text_feats,
        embed_dim=encoder_embed_dim(encoder),
        criteria=campaign.criterion_keys,
        mode=campaign.consensus_mode,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        encoder=encoder,
    )
    if data.test is None or data.test.n_pairs == 0:
        raise TrainingDataError(
            f"Campaign {campaign.name!r} has no held-out pairs with features for {encoder!r}: the test "
            "images' captions could not be encoded."
        )
    if data.train.n_pairs == 0:
        raise TrainingDataError(
            f"Campaign {campaign.name!r} has no training pairs with features for {encoder!r}."
        )
    test_records = [
        r for r in records if image_split(r.image_key, validation_fraction, test_fraction) == "test"
    ]
    ceiling, ceiling_pairs = human_agreement(test_records)
    data.info.update(
        human_ceiling=None if np.isnan(ceiling) else ceiling,
        human_ceiling_pairs=ceiling_pairs,
        dropped_captions=len(missing),
    )
    return LoadedData(
        data=data,
        n_judgments=len(records),
        n_pairs=data.train.n_pairs + (data.validation.n_pairs if data.validation else 0) + data.test.n_pairs,
        test_judgments=test_records,
        dropped_captions=sorted(missing),
        judgments_sha256=digest.sha.hexdigest(),
        last_judgment_id=digest.last_id,
        encoder_fingerprint=fingerprint,
    )


def checkpoint_encoder_check(*, meta: dict, encoder: str, data: TrainingData | None = None) -> None:
    """Refuse to evaluate a checkpoint on features of another encoder (the numbers would be noise)."""
    trained_on = meta.get("encoder")
    if trained_on != encoder:
        raise EncoderMismatchError(
            f"Reward model v{meta.get('version', '?')} was trained on encoder {trained_on!r}, but the "
            f"features come from {encoder!r}. Use the same encoder or retrain."
        )
    if data is not None:
        dims = (meta.get("image_dim"), meta.get("text_dim"))
        have = (int(data.image_feats.shape[1]), int(data.text_feats.shape[1]))
        if None not in dims and tuple(dims) != have:
            raise EncoderMismatchError(
                f"Reward model v{meta.get('version', '?')} expects feature widths {dims}, the cache of "
                f"{encoder!r} has {have}: the encoder changed since the model was trained."
            )
