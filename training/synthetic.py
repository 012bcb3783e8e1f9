"""Synthetic judgments from a known hidden preference, for tests and the benchmark. Pure NumPy.

There is no public human preference data offline, so the claims "the trained reward recovers the
preference" and "it beats CLIPScore" are checked against simulated annotators whose preference is
known: a caption's hidden reward is ``clip_weight * cos(image, text) + w . text_features``, i.e. part
image-text agreement (what CLIPScore sees) and part qualities of the text CLIPScore cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.pairs import JudgmentRecord


@dataclass
class SyntheticPool:
    image_feats: np.ndarray  # float32 [M, Fi], one row per caption (the caption's image)
    text_feats: np.ndarray  # float32 [M, Ft]
    caption_ids: list[int]
    row_image_keys: list[str]
    hidden_reward: np.ndarray  # float64 [M]
    hidden_criteria: np.ndarray  # float64 [M, C], on 1-5
    embed_dim: int
    criteria: list[str]
    tasks: list[tuple[int, str, list[int]]]  # (task id, image key, caption ids)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_pool(
    *,
    n_images: int,
    captions_per_image: int = 4,
    embed_dim: int = 32,
    image_extra: int = 16,
    text_extra: int = 0,
    criteria: tuple[str, ...] = ("accuracy", "completeness"),
    clip_weight: float = 1.0,
    seed: int = 0,
) -> SyntheticPool:
    rng = np.random.default_rng(seed)
    img_embed = _unit(rng.normal(size=(n_images, embed_dim)))
    img_extra = rng.normal(size=(n_images, image_extra))
    rows = n_images * captions_per_image
    image_of_row = np.repeat(np.arange(n_images), captions_per_image)
    # Captions scattered around their image's embedding at different distances, so CLIPScore has
    # a real (but partial) signal.
    closeness = rng.uniform(0.0, 1.5, size=(rows, 1))
    txt_embed = _unit(img_embed[image_of_row] * closeness + rng.normal(size=(rows, embed_dim)) * 0.3)
    txt_extra = rng.normal(size=(rows, text_extra))
    image_feats = np.concatenate([img_embed[image_of_row], img_extra[image_of_row]], axis=1)
    text_feats = np.concatenate([txt_embed, txt_extra], axis=1)
    cos = np.sum(image_feats[:, :embed_dim] * txt_embed, axis=1)
    w = rng.normal(size=embed_dim) / np.sqrt(embed_dim)
    style = txt_embed @ w
    hidden = clip_weight * cos / cos.std() + style / style.std()
    crit_w = rng.normal(size=(embed_dim, len(criteria))) / np.sqrt(embed_dim)
    crit_raw = 0.7 * hidden[:, None] + (txt_embed @ crit_w) / np.maximum((txt_embed @ crit_w).std(0), 1e-9)
    hidden_criteria = 1.0 + 4.0 / (1.0 + np.exp(-crit_raw))
    caption_ids = list(range(1, rows + 1))
    keys = [f"{i:064x}" for i in range(n_images)]
    tasks = [
        (i + 1, keys[i], caption_ids[i * captions_per_image : (i + 1) * captions_per_image])
        for i in range(n_images)
    ]
    return SyntheticPool(
        image_feats=image_feats.astype(np.float32),
        text_feats=text_feats.astype(np.float32),
        caption_ids=caption_ids,
        row_image_keys=[keys[i] for i in image_of_row],
        hidden_reward=hidden,
        hidden_criteria=hidden_criteria,
        embed_dim=embed_dim,
        criteria=list(criteria),
        tasks=tasks,
    )


def synthetic_judgments(
    pool: SyntheticPool,
    *,
    annotators_per_task: int = 1,
    noise: float = 0.0,
    tie_margin: float = 0.0,
    rating_noise: float = 0.0,
    seed: int = 0,
) -> list[JudgmentRecord]:
    """Each simulated annotator ranks by hidden reward + Gaussian ``noise`` (in reward std units);
    captions whose noisy rewards lie within ``tie_margin`` of the tier's best are tied."""
    rng = np.random.default_rng(seed)
    row_of = {c: i for i, c in enumerate(pool.caption_ids)}
    scale = pool.hidden_reward.std() or 1.0
    out = []
    for task_id, key, captions in pool.tasks:
        rows = [row_of[c] for c in captions]
        for user in range(annotators_per_task):
            noisy = pool.hidden_reward[rows] / scale + rng.normal(size=len(rows)) * noise
            order = np.argsort(-noisy, kind="stable")
            tiers: list[list[int]] = []
            top = None
            for o in order:
                if tiers and top - noisy[o] <= tie_margin:
                    tiers[-1].append(captions[o])
                else:
                    tiers.append([captions[o]])
                    top = noisy[o]
            ratings = {}
            for c, r in zip(captions, rows, strict=True):
                values = pool.hidden_criteria[r] + rng.normal(size=len(pool.criteria)) * rating_noise
                ratings[str(c)] = {
                    k: int(np.clip(np.rint(v), 1, 5)) for k, v in zip(pool.criteria, values, strict=True)
                }
            out.append(JudgmentRecord(task_id, user + 1, tiers, ratings, key))
    return out


# --- pictures with a known preference, for fine-tuning the encoder -------------------------------

COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 215),
    "yellow": (230, 205, 40),
}
SHAPES = ("square", "circle", "stripe")


@dataclass
class SyntheticImagePool:
    """Real pixels and caption texts (not features): what encoder fine-tuning trains on."""

    images: list  # PIL images, one per image
    row_images: list  # the caption row's image (the same object for captions of one image)
    texts: list[str]  # one per caption row
    caption_ids: list[int]
    row_image_keys: list[str]
    criteria: list[str]
    judgments: list[JudgmentRecord]


def synthetic_image_pool(
    *, n_images: int, size: int = 64, seed: int = 0, criteria: tuple[str, ...] = ("accuracy",)
) -> SyntheticImagePool:
    """Coloured shapes on a noisy background, each with four captions whose order is known:
    "a red circle" (right colour and shape) > "a circle" (right, incomplete) > "a picture" (generic) >
    "a blue circle" (wrong colour). Telling the first from the last needs the image, not only the text.
    One judgment per image ranks the four; each criterion rates them 5, 4, 3, 1.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    images, row_images, texts, caption_ids, keys, judgments = [], [], [], [], [], []
    for i in range(n_images):
        colour = names[i % len(names)]
        shape = SHAPES[(i // len(names)) % len(SHAPES)]
        background = rng.integers(90, 165, size=(size, size, 3), dtype=np.uint8)
        img = PILImage.fromarray(background)
        draw = ImageDraw.Draw(img)
        lo, hi = size // 5 + int(rng.integers(0, size // 8 + 1)), size - size // 5
        box = (lo, lo, hi, hi)
        if shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        elif shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        else:
            draw.rectangle((0, size // 3, size, 2 * size // 3), fill=COLOURS[colour])
        wrong = names[(names.index(colour) + 1 + int(rng.integers(0, len(names) - 1))) % len(names)]
        captions = [f"a {colour} {shape}", f"a {shape}", "a picture", f"a {wrong} {shape}"]
        key = f"{i + 1:064x}"
        ids = [4 * i + k + 1 for k in range(4)]
        images.append(img)
        for cid, text in zip(ids, captions, strict=True):
            row_images.append(img)
            texts.append(text)
            caption_ids.append(cid)
            keys.append(key)
        ratings = {
            str(cid): dict.fromkeys(criteria, score) for cid, score in zip(ids, (5, 4, 3, 1), strict=True)
        }
        judgments.append(JudgmentRecord(i + 1, 1, [[c] for c in ids], ratings, key))
    return SyntheticImagePool(
        images=images,
        row_images=row_images,
        texts=texts,
        caption_ids=caption_ids,
        row_image_keys=keys,
        criteria=list(criteria),
        judgments=judgments,
    )
