"""Rows for training tests, created directly through the models (no annotation services needed):
a campaign whose judgments come from simulated annotators with a known hidden preference."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
from django.contrib.auth.models import User

from annotate.models import Campaign, Judgment, Task, TaskCaption, default_criteria
from pool.models import Caption, Image, text_sha256
from training.synthetic import SyntheticPool, synthetic_judgments, synthetic_pool


@dataclass
class JudgedCampaign:
    campaign: Campaign
    pool: SyntheticPool
    row_of_caption: dict[int, int] = field(default_factory=dict)  # real caption id -> pool row

    def features(self, caption_ids):
        rows = [self.row_of_caption[int(c)] for c in caption_ids if int(c) in self.row_of_caption]
        ids = [int(c) for c in caption_ids if int(c) in self.row_of_caption]
        return self.pool.image_feats[rows], self.pool.text_feats[rows], ids


def campaign_make(
    name: str = "campaign", *, consensus_mode: str = "each", criteria=("accuracy", "completeness")
):
    crit = [c for c in default_criteria() if c["key"] in criteria]
    return Campaign.objects.create(name=name, criteria=crit, consensus_mode=consensus_mode)


def judged_campaign(
    *,
    name: str = "campaign",
    n_images: int = 60,
    captions_per_image: int = 4,
    annotators: int = 1,
    noise: float = 0.0,
    tie_margin: float = 0.0,
    seed: int = 0,
    consensus_mode: str = "each",
    pool: SyntheticPool | None = None,
) -> JudgedCampaign:
    campaign = campaign_make(name, consensus_mode=consensus_mode)
    pool = pool or synthetic_pool(
        n_images=n_images, captions_per_image=captions_per_image, embed_dim=16, image_extra=8, seed=seed
    )
    users = [User.objects.get_or_create(username=f"sim-annotator-{i + 1}")[0] for i in range(annotators)]
    real_of_synthetic: dict[int, int] = {}
    row_of_caption: dict[int, int] = {}
    synthetic_row = {c: i for i, c in enumerate(pool.caption_ids)}
    task_of_synthetic: dict[int, Task] = {}
    for task_id, key, synthetic_captions in pool.tasks:
        image, _ = Image.objects.get_or_create(sha256=key, defaults={"width": 64, "height": 64, "file": ""})
        task = Task.objects.create(campaign=campaign, image=image)
        task_of_synthetic[task_id] = task
        for position, sc in enumerate(synthetic_captions):
            text = f"{name} caption {sc}"
            caption = Caption.objects.create(image=image, text=text, text_sha256=text_sha256(text))
            TaskCaption.objects.create(task=task, caption=caption, position=position)
            real_of_synthetic[sc] = caption.pk
            row_of_caption[caption.pk] = synthetic_row[sc]
    records = synthetic_judgments(
        pool, annotators_per_task=annotators, noise=noise, tie_margin=tie_margin, seed=seed + 1
    )
    Judgment.objects.bulk_create(
        [
            Judgment(
                task=task_of_synthetic[r.task_id],
                user=users[r.user_id - 1],
                ranking=[[real_of_synthetic[c] for c in tier] for tier in r.ranking],
                ratings={str(real_of_synthetic[int(c)]): v for c, v in r.ratings.items()},
                client_key=uuid.uuid4(),
            )
            for r in records
        ]
    )
    Task.objects.filter(campaign=campaign).update(judgment_count=annotators)
    return JudgedCampaign(campaign=campaign, pool=pool, row_of_caption=row_of_caption)


def features_from(*campaigns: JudgedCampaign):
    """A ``caption_features`` stand-in serving the campaigns' synthetic features by caption id."""

    def caption_features(*, encoder: str, caption_ids):
        img, txt, ids = [], [], []
        for jc in campaigns:
            a, b, c = jc.features(caption_ids)
            img.append(a)
            txt.append(b)
            ids.extend(c)
        order = {c: i for i, c in enumerate(ids)}
        keep = [order[int(c)] for c in caption_ids if int(c) in order]
        return np.concatenate(img)[keep], np.concatenate(txt)[keep], [ids[i] for i in keep]

    return caption_features
