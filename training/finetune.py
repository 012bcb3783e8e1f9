"""Fine-tune the encoder with the reward losses. Plain PyTorch, no Django: ``finetune(config, data)``.

The frozen-feature reward model (``training/train.py``) trains small heads on cached embeddings. Here
the encoder runs in the graph on pixels and caption texts, and the same heads (``RewardEnsemble``) and
the same losses (Bradley-Terry with ties as 0.5, per-task pair weights, 1-5 ratings) train the heads and
a chosen part of the encoder together, as PickScore, HPSv2 and ImageReward do.

Modes:
- ``last_blocks``: unfreeze the last ``blocks`` transformer blocks (EfficientNet: MBConv blocks) of the
  chosen towers and what follows them (final norm, projection; EfficientNet's head conv, its batch
  norm and classifier).
- ``lora``: peft LoRA adapters (rank ``lora_r``, ``lora_alpha``) on the attention and MLP layers of the
  last ``blocks`` blocks (0 = every block); the base weights stay frozen and the adapters are merged
  into them before saving, so inference needs no peft.

A fine-tuned encoder is a NEW ENCODER IDENTITY: its weights are saved to a new file or directory that
the existing name scheme loads (``open_clip:<arch>:<file>``, ``hf:<dir>``,
``offline:effnet-minilm:<file>``), with its own fingerprint and so its own embedding cache. The heads
are saved with ``save_checkpoint`` and record the new name, so reward inference works unchanged.

The encoder runs in eval mode throughout (EfficientNet's batch-norm statistics stay those of ImageNet,
which small batches would ruin, and frozen buffers stay bit-identical); only the heads use dropout.
Deterministic for a seed on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn
from torch.nn import functional as F

from scoring.encoder_names import OFFLINE_DEFAULT, EncoderError, encoder_fingerprint
from scoring.encoders import (
    OFFLINE_WEIGHTS_FORMAT,
    Encoder,
    HFEncoder,
    OfflineEncoder,
    OpenClipEncoder,
    encoder_build,
)
from scoring.reward_model import RewardEnsemble, RewardHeadConfig, load_checkpoint, save_checkpoint
from training.evaluate import reward_model_evaluate
from training.finetune_config import (  # noqa: F401 - re-exported: callers import them from here
    DEFAULT_ENCODER_LR,
    DEFAULT_MIN_JUDGMENTS,
    MODES,
    TOWERS,
    FinetuneConfig,
    FinetuneError,
    TrainingCancelled,
    finetune_config_check,
)
from training.losses import bradley_terry_loss, criterion_loss
from training.pairs import JudgmentRecord, PairSet, TrainingData, image_split, training_data_build

ImageInput = PILImage.Image | torch.Tensor | str | os.PathLike

# --- data ---------------------------------------------------------------------------------------


@dataclass
class FinetuneData:
    """Pixels and texts instead of cached features, with the pairs and ratings of ``training/pairs.py``.

    ``pairs`` is a TrainingData whose feature arrays are zero-width: its PairSets index caption rows,
    and ``pairs.image_of_row`` maps each row to its image in ``images``.
    """

    images: list  # one per distinct image: PIL image, uint8 tensor [3, H, W] or file path
    texts: list[str]  # one per caption row
    pairs: TrainingData

    def __post_init__(self) -> None:
        rows = len(self.pairs.image_of_row)
        if len(self.texts) != rows:
            raise FinetuneError(f"{len(self.texts)} texts for {rows} caption rows.")
        n_images = int(self.pairs.image_of_row.max()) + 1 if rows else 0
        if len(self.images) != n_images:
            raise FinetuneError(f"{len(self.images)} images for {n_images} distinct images of the rows.")


def finetune_data_build(
    *,
    judgments: Sequence[JudgmentRecord],
    caption_ids: Sequence[int],
    row_image_keys: Sequence[str],
    row_images: Sequence[ImageInput],
    texts: Sequence[str],
    criteria: Sequence[str],
    mode: str = "each",
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    min_judgments: int = DEFAULT_MIN_JUDGMENTS,
    require_held_out: bool = True,
    campaign: str = "",
) -> FinetuneData:
    """Judgments and one (image, text) per caption row -> FinetuneData, split by image exactly as the
    frozen-head training splits (``image_split``), so both are judged on the same held-out pairs.

    Refuses, like ``training.data.training_data_load``: fewer than ``min_judgments`` judgments (saying
    how many more are needed), no held-out image, no training pair.
    """
    who = f"Campaign {campaign!r}" if campaign else "The data"
    if len(judgments) < min_judgments:
        raise FinetuneError(
            f"{who} has {len(judgments)} judgments; fine-tuning the encoder needs at least {min_judgments}. "
            f"Collect {min_judgments - len(judgments)} more."
        )
    split_of = {
        key: image_split(key, validation_fraction, test_fraction) for key in {j.image_key for j in judgments}
    }
    if require_held_out and "test" not in split_of.values():
        if test_fraction <= 0:
            raise FinetuneError(
                f"{who} has no held-out images: the test fraction is 0, so no image is ever held out and the "
                "model cannot be evaluated. Set a test fraction above 0 (LOUPE_REWARD_TEST_FRACTION)."
            )
        raise FinetuneError(
            f"{who} has no held-out images: all {len(split_of)} judged images fell into the training and "
            f"validation splits. {test_fraction:.0%} of images are held out, chosen by a hash of the image, "
            f"so judge tasks on about {_images_for_one(test_fraction)} more images (new ones) to expect one "
            "held-out image; more to measure anything reliably."
        )
    if not (len(caption_ids) == len(row_image_keys) == len(row_images) == len(texts)):
        raise FinetuneError("caption_ids, row_image_keys, row_images and texts must have one entry per row.")
    empty = np.zeros((len(caption_ids), 0), np.float32)
    pairs = training_data_build(
        judgments=judgments,
        caption_ids=caption_ids,
        row_image_keys=row_image_keys,
        image_feats=empty,
        text_feats=empty,
        embed_dim=0,
        criteria=criteria,
        mode=mode,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
    )
    if pairs.train.n_pairs == 0:
        if "train" not in split_of.values():
            train_fraction = 1.0 - validation_fraction - test_fraction
            raise FinetuneError(
                f"{who} has no training pairs: all {len(split_of)} judged images fell into the held-out "
                f"splits (validation {validation_fraction:.0%}, test {test_fraction:.0%}, by a hash of the "
                f"image). Judge tasks on about {_images_for_one(train_fraction)} more images (new ones) to "
                "expect one training image; far more to train anything."
            )
        raise FinetuneError(f"{who} has no training pairs: every judgment needs at least two captions.")
    first_row = np.unique(pairs.image_of_row, return_index=True)[1]
    return FinetuneData(images=[row_images[i] for i in first_row], texts=list(texts), pairs=pairs)


def _images_for_one(fraction: float) -> int:
    """How many more images to judge to expect one in a split that takes ``fraction`` of the images."""
    return math.ceil(1.0 / fraction) if fraction > 0 else 0


def _crops(encoder: Encoder, images: Sequence[ImageInput]) -> torch.Tensor:
    """Every image as a uint8 [3, S, S] crop, decoded once (about 150 KB per image at 224 px)."""
    pre = encoder.preprocess
    out = torch.empty((len(images), 3, pre.size, pre.size), dtype=torch.uint8)
    for i, img in enumerate(images):
        if isinstance(img, torch.Tensor):
            if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] not in (1, 3):
                raise FinetuneError(
                    f"image {i}: a decoded image must be a uint8 tensor [3, H, W], got {img.dtype} "
                    f"{tuple(img.shape)}."
                )
            out[i] = pre.resize_crop_tensor(img.cpu())
            continue
        if not isinstance(img, PILImage.Image):
            try:
                img = pre.load(img)
            except (OSError, ValueError) as exc:
                raise FinetuneError(f"image {i}: cannot read {img}: {exc}") from exc
        out[i] = pre.to_uint8(img)
    return out


# --- what can be trained in each encoder ----------------------------------------------------------


@dataclass
class _Tower:
    """One tower of an encoder, as parameter-name prefixes inside ``root`` (the module whose
    ``named_parameters`` the names come from; ``root_key`` is its path from the Encoder object)."""

    name: str
    root: nn.Module
    root_key: str
    blocks: str  # prefix of the block list inside root
    n_blocks: int
    head: list[str]  # prefixes of what follows the blocks
    lora_targets: tuple[str, ...]  # module names inside one block that LoRA wraps
    unsupported: str = ""  # why this tower cannot be fine-tuned at all
    lora_unsupported: str = ""
    enable_checkpointing: Callable[[], None] | None = None

    def block_prefixes(self, n: int) -> list[str]:
        first = self.n_blocks - n if n else 0
        return [f"{self.blocks}.{i}" for i in range(first, self.n_blocks)]


def _has_params(root: nn.Module, prefix: str) -> bool:
    return any(_under(name, prefix) for name, _ in root.named_parameters())


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _hf_layer_checkpointing(model: nn.Module, layers: nn.ModuleList) -> Callable[[], None]:
    def enable() -> None:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # transformers checkpoints a layer only while the layer itself is in training mode; setting the
        # flag on the layer object alone leaves its dropout submodules in eval mode.
        for layer in layers:
            layer.training = True

    return enable


def _open_clip_towers(encoder: OpenClipEncoder) -> dict[str, _Tower]:
    model = encoder.model
    visual = model.visual
    vis_blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    targets = ("attn", "mlp.c_fc", "mlp.c_proj")
    image = _Tower(
        "image",
        model,
        "model",
        "visual.transformer.resblocks",
        len(vis_blocks) if vis_blocks is not None else 0,
        [p for p in ("visual.attn_pool", "visual.ln_post", "visual.proj") if _has_params(model, p)],
        targets,
        unsupported=(
            ""
            if vis_blocks is not None
            else f"this open_clip image tower ({type(visual).__name__}) has no transformer blocks; fine-tune "
            "the text tower only (towers=('text',))"
        ),
        enable_checkpointing=lambda: visual.set_grad_checkpointing(True),
    )
    text_module = getattr(model, "text", None)  # CustomTextCLIP keeps its text tower under .text
    base = "text." if text_module is not None else ""
    holder = text_module if text_module is not None else model
    txt_blocks = getattr(getattr(holder, "transformer", None), "resblocks", None)

    def text_checkpointing() -> None:
        holder.transformer.grad_checkpointing = True

    text = _Tower(
        "text",
        model,
        "model",
        f"{base}transformer.resblocks",
        len(txt_blocks) if txt_blocks is not None else 0,
        [p for p in (f"{base}ln_final", f"{base}text_projection") if _has_params(model, p)],
        targets,
        unsupported=(
            ""
            if txt_blocks is not None
            else "this open_clip text tower is a transformers model without open_clip resblocks; fine-tune "
            "the image tower only (towers=('image',))"
        ),
        enable_checkpointing=text_checkpointing,
    )
    return {"image": image, "text": text}


def _hf_towers(encoder: HFEncoder) -> dict[str, _Tower]:
    model = encoder.model
    targets = (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "mlp.fc1",
        "mlp.fc2",
    )
    towers = {}
    for name, sub, heads in (
        ("image", "vision_model", ("vision_model.post_layernorm", "vision_model.head", "visual_projection")),
        ("text", "text_model", ("text_model.final_layer_norm", "text_model.head", "text_projection")),
    ):
        layers = getattr(getattr(getattr(model, sub, None), "encoder", None), "layers", None)
        towers[name] = _Tower(
            name,
            model,
            "model",
            f"{sub}.encoder.layers",
            len(layers) if layers is not None else 0,
            [p for p in heads if _has_params(model, p)],
            targets,
            unsupported="" if layers is not None else f"{type(model).__name__} has no {sub}.encoder.layers",
            enable_checkpointing=_hf_layer_checkpointing(model, layers) if layers is not None else None,
        )
    return towers


def _offline_towers(encoder: OfflineEncoder) -> dict[str, _Tower]:
    bert = encoder.sentence[0].auto_model
    image = _Tower(
        "image",
        encoder.cnn,
        "cnn",
        "_blocks",
        len(encoder.cnn._blocks),
        ["_conv_head", "_bn1", "_fc"],
        (),
        lora_unsupported="EfficientNet-Lite0 is convolutional; use mode='last_blocks' for the image tower",
    )
    text = _Tower(
        "text",
        bert,
        "sentence.0.auto_model",
        "encoder.layer",
        len(bert.encoder.layer),
        [],  # mean pooling and normalisation follow the layers: nothing to train after them
        (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ),
        enable_checkpointing=_hf_layer_checkpointing(bert, bert.encoder.layer),
    )
    return {"image": image, "text": text}


def _towers(encoder: Encoder) -> dict[str, _Tower]:
    if isinstance(encoder, OpenClipEncoder):
        return _open_clip_towers(encoder)
    if isinstance(encoder, HFEncoder):
        return _hf_towers(encoder)
    if isinstance(encoder, OfflineEncoder):
        return _offline_towers(encoder)
    raise FinetuneError(f"Encoder {encoder.name!r} ({type(encoder).__name__}) cannot be fine-tuned.")


def _check_towers(config: FinetuneConfig, towers: dict[str, _Tower]) -> None:
    for name in config.towers:
        tower = towers[name]
        if tower.unsupported:
            raise FinetuneError(f"Encoder {config.encoder!r}: {tower.unsupported}.")
        if config.mode == "lora" and tower.lora_unsupported:
            raise FinetuneError(f"Encoder {config.encoder!r}: {tower.lora_unsupported}.")
        if config.blocks > tower.n_blocks:
            raise FinetuneError(
                f"Encoder {config.encoder!r}: the {name} tower has {tower.n_blocks} blocks, so blocks="
                f"{config.blocks} is impossible; use blocks <= {tower.n_blocks}"
                + (" (or 0 for LoRA on every block)." if config.mode == "lora" else ".")
            )


def _lora_inject(config: FinetuneConfig, towers: list[_Tower]) -> list:
    """LoRA adapters on the chosen blocks, one peft LoraModel per root module (open_clip and
    transformers keep both towers under one root). Returns the LoraModels, for merging."""
    from peft import LoraConfig, LoraModel

    by_root: dict[int, list[_Tower]] = {}
    for tower in towers:
        by_root.setdefault(id(tower.root), []).append(tower)
    wrapped = []
    for group in by_root.values():
        parts = []
        for tower in group:
            blocks = "|".join(re.escape(p) for p in tower.block_prefixes(config.blocks))
            targets = "|".join(re.escape(t) for t in tower.lora_targets)
            parts.append(rf"(?:{blocks})\.(?:{targets})")
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="|".join(f"(?:{p})" for p in parts),
            bias="none",
        )
        try:
            wrapped.append(LoraModel(group[0].root, lora, "default"))
        except ValueError as exc:
            raise FinetuneError(
                f"Encoder {config.encoder!r}: peft cannot put LoRA adapters on {[t.name for t in group]}: "
                f"{exc}. Use mode='last_blocks'."
            ) from exc
    return wrapped


def _tuned_prefixes(config: FinetuneConfig, towers: list[_Tower]) -> list[tuple[_Tower, str]]:
    """(tower, prefix inside its root) of every tensor fine-tuning may change."""
    out = []
    for tower in towers:
        for block in tower.block_prefixes(config.blocks):
            if config.mode == "lora":
                out.extend((tower, f"{block}.{t}") for t in tower.lora_targets)
            else:
                out.append((tower, block))
        if config.mode == "last_blocks":
            out.extend((tower, h) for h in tower.head)
    return out


# --- the forward pass -----------------------------------------------------------------------------


def _autocast(config: FinetuneConfig, device: torch.device):
    if device.type == "cuda" and config.mixed_precision:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _offline_text_forward(encoder: OfflineEncoder, texts: list[str]) -> torch.Tensor:
    """MiniLM's sentence embedding in the graph (``SentenceTransformer.encode`` runs without grad)."""
    tokenize = getattr(encoder.sentence, "preprocess", None) or encoder.sentence.tokenize
    features = tokenize(texts)
    features = {k: v.to(encoder.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
    return F.normalize(encoder.sentence(features)["sentence_embedding"].float(), dim=-1)


def _open_clip_text_forward(encoder: OpenClipEncoder, texts: list[str]) -> torch.Tensor:
    """open_clip's ``encode_text`` on tokens cut after the batch's longest caption.

    open_clip pads every caption to the full context (77 tokens) while captions are a few tokens long,
    so most of the text tower's work, forward and backward, is on padding. With a causal mask and
    pooling at the end-of-text token, positions after a caption's end never reach its embedding: the
    cut changes the cost, not the result (the test compares the two). Other text towers run unchanged.
    """
    import open_clip
    from open_clip.transformer import text_global_pool

    model = encoder.model
    tokens = encoder.tokenizer(texts, context_length=encoder.context_length).to(encoder.device)
    if not (
        isinstance(model, open_clip.model.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", "") == "argmax"
    ):
        return encoder._text_forward(texts)
    # argmax finds the end-of-text token, the highest id of open_clip's vocabulary.
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), tokens, "argmax")
    if isinstance(model.text_projection, nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return F.normalize(x.float(), dim=-1)


class _EffnetSplit:
    """The offline encoder's image tower cut before its first trainable MBConv block: the part below the
    cut is frozen and, without augmentation, sees the same pixels every epoch, so its output is computed
    once per image and kept (``prefix``); only ``tail`` (the trainable blocks, the head conv, the
    classifier and the label-space embedding) runs in each step. ``tail(prefix(x))`` is exactly
    ``OfflineEncoder._image_forward(x)`` (a test checks it)."""

    def __init__(self, encoder: OfflineEncoder, trainable_blocks: int):
        self.encoder, self.cnn = encoder, encoder.cnn
        self.first = len(self.cnn._blocks) - trainable_blocks

    def _block(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        # As EfficientNet.extract_features calls each block (drop connect only acts in train mode).
        rate = self.cnn._global_params.drop_connect_rate
        if rate:
            rate *= float(idx) / len(self.cnn._blocks)
        return self.cnn._blocks[idx](x, drop_connect_rate=rate)

    def prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        cnn = self.cnn
        x = cnn._swish(cnn._bn0(cnn._conv_stem(pixels)))
        for idx in range(self.first):
            x = self._block(idx, x)
        return x

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        cnn = self.cnn
        for idx in range(self.first, len(cnn._blocks)):
            x = self._block(idx, x)
        pooled = cnn._swish(cnn._bn1(cnn._conv_head(x))).mean(dim=(2, 3)).float()
        probs = cnn._fc(pooled).float().softmax(dim=-1)
        shared = F.normalize(probs @ self.encoder.label_embeddings, dim=-1)
        return torch.cat([shared, pooled], dim=1)


class _Features:
    """Encoder features of images and caption rows: in the graph for the towers being tuned, computed
    once (and kept) for a frozen tower, whose features never change. With ``cache_frozen_prefix`` and
    ``last_blocks`` on the offline encoder's image tower, the frozen blocks below the trained ones run
    once per image too (``_EffnetSplit``)."""

    def __init__(self, encoder: Encoder, crops: torch.Tensor, texts: list[str], config: FinetuneConfig):
        self.encoder, self.crops, self.texts, self.config = encoder, crops, texts, config
        self.device = encoder.device
        self.tuned = set(config.towers)
        self._frozen: dict[str, torch.Tensor] = {}
        self._done: dict[str, np.ndarray] = {}
        self.split: _EffnetSplit | None = None
        if (
            config.cache_frozen_prefix
            and config.mode == "last_blocks"
            and "image" in self.tuned
            and isinstance(encoder, OfflineEncoder)
        ):
            self.split = _EffnetSplit(encoder, config.blocks)
        self._prefix: torch.Tensor | None = None
        self._prefix_done = np.zeros(len(crops), bool)

    def _pixels(self, idx: np.ndarray) -> torch.Tensor:
        pixels = self.encoder.preprocess.normalize(self.crops[torch.as_tensor(idx)].to(self.device))
        return pixels.contiguous(memory_format=torch.channels_last)

    def _prefixes(self, idx: np.ndarray, chunk: int = 32) -> torch.Tensor:
        missing = idx[~self._prefix_done[idx]]
        if len(missing):
            with torch.no_grad(), _autocast(self.config, self.device):
                out = torch.cat(
                    [
                        self.split.prefix(self._pixels(missing[s : s + chunk]))
                        for s in range(0, len(missing), chunk)
                    ]
                ).float()
            if self._prefix is None:
                self._prefix = torch.zeros((len(self.crops), *out.shape[1:]), device=self.device)
            self._prefix[torch.as_tensor(missing, device=self.device)] = out
            self._prefix_done[missing] = True
        return self._prefix[torch.as_tensor(idx, device=self.device)]

    def _image_forward(self, idx: np.ndarray) -> torch.Tensor:
        if self.split is not None:
            x = self._prefixes(idx)
            with _autocast(self.config, self.device):
                return self.split.tail(x.contiguous(memory_format=torch.channels_last)).float()
        with _autocast(self.config, self.device):
            return self.encoder._image_forward(self._pixels(idx)).float()

    def _text_forward(self, rows: np.ndarray) -> torch.Tensor:
        texts = [self.texts[int(r)] for r in rows]
        with _autocast(self.config, self.device):
            if isinstance(self.encoder, OfflineEncoder):
                return _offline_text_forward(self.encoder, texts)
            if isinstance(self.encoder, OpenClipEncoder):
                return _open_clip_text_forward(self.encoder, texts)
            return self.encoder._text_forward(texts).float()

    def _get(self, tower: str, idx: np.ndarray, grad: bool, chunk: int) -> torch.Tensor:
        forward = self._image_forward if tower == "image" else self._text_forward
        if tower in self.tuned:
            if grad:
                return forward(idx)
            with torch.no_grad():
                return torch.cat([forward(idx[s : s + chunk]) for s in range(0, len(idx), chunk)])
        total = len(self.crops) if tower == "image" else len(self.texts)
        if tower not in self._done:
            self._done[tower] = np.zeros(total, bool)
        missing = idx[~self._done[tower][idx]]
        if len(missing):
            with torch.no_grad():
                feats = torch.cat([forward(missing[s : s + chunk]) for s in range(0, len(missing), chunk)])
            if tower not in self._frozen:
                self._frozen[tower] = torch.zeros((total, feats.shape[1]), device=self.device)
            self._frozen[tower][torch.as_tensor(missing, device=self.device)] = feats
            self._done[tower][missing] = True
        return self._frozen[tower][torch.as_tensor(idx, device=self.device)]

    def images(self, idx: np.ndarray, grad: bool, chunk: int = 32) -> torch.Tensor:
        return self._get("image", np.asarray(idx, np.int64), grad, chunk)

    def rows(self, rows: np.ndarray, grad: bool, chunk: int = 128) -> torch.Tensor:
        return self._get("text", np.asarray(rows, np.int64), grad, chunk)


def _ratings_by_row(pairset: PairSet, n_rows: int, n_criteria: int) -> np.ndarray:
    out = np.full((n_rows, n_criteria), np.nan, np.float32)
    if len(pairset.rated_rows):
        out[pairset.rated_rows] = pairset.ratings
    return out


def _batch_losses(
    heads: RewardEnsemble,
    feats: _Features,
    data: FinetuneData,
    idx: np.ndarray,
    boot: torch.Tensor,
    row_ratings: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry and criterion losses of the training pairs ``idx``, through the encoder: each
    distinct image and caption of the batch is encoded once. ``boot`` [E, images] holds each ensemble
    member's bootstrap weight per image."""
    ts, image_of_row = data.pairs.train, data.pairs.image_of_row
    device = boot.device
    a, b = ts.a[idx], ts.b[idx]
    rows, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    images, image_index = np.unique(image_of_row[rows], return_inverse=True)
    img = feats.images(images, grad=True)
    txt = feats.rows(rows, grad=True)
    out = heads.raw_outputs(img, txt, torch.as_tensor(image_index, device=device))  # [E, R, 1 + C]
    reward = out[..., 0]
    n = len(idx)
    inv = torch.as_tensor(inverse, device=device)
    weight = torch.as_tensor(ts.weight[idx], device=device).unsqueeze(0)
    weight = weight * boot[:, torch.as_tensor(image_of_row[a], device=device)]
    target = torch.as_tensor(ts.target[idx], device=device)
    bt = bradley_terry_loss(reward[:, inv[:n]], reward[:, inv[n:]], target, weight)
    if out.shape[-1] == 1:
        return bt, bt * 0.0
    predicted = heads.criteria_from_logits(out[..., 1:])
    row_weight = boot[:, torch.as_tensor(image_of_row[rows], device=device)]
    rated = row_ratings[torch.as_tensor(rows, device=device)][None]
    return bt, criterion_loss(predicted, rated, row_weight)


@torch.no_grad()
def _split_metrics(
    heads: RewardEnsemble, feats: _Features, data: FinetuneData, pairset: PairSet, config: FinetuneConfig
) -> dict:
    """Loss and pairwise accuracy of the ensemble mean on a split (dropout off), like train.validation_loss."""
    was_training = heads.training
    heads.eval()
    image_of_row = data.pairs.image_of_row
    rows, inverse = np.unique(np.concatenate([pairset.a, pairset.b]), return_inverse=True)
    images, image_index = np.unique(image_of_row[rows], return_inverse=True)
    img = feats.images(images, grad=False)
    txt = feats.rows(rows, grad=False)
    device = img.device
    out = heads.raw_outputs(img, txt, torch.as_tensor(image_index, device=device))
    reward = out[..., 0].mean(dim=0)
    n = pairset.n_pairs
    r_a, r_b = (
        reward[torch.as_tensor(inverse[:n], device=device)],
        reward[torch.as_tensor(inverse[n:], device=device)],
    )
    target = torch.as_tensor(pairset.target, device=device)
    bt = float(bradley_terry_loss(r_a, r_b, target, torch.as_tensor(pairset.weight, device=device)))
    crit = 0.0
    if out.shape[-1] > 1:
        ratings = torch.as_tensor(_ratings_by_row(pairset, len(image_of_row), len(data.pairs.criteria)))
        crit = float(
            criterion_loss(heads.criteria_from_logits(out[..., 1:]).mean(dim=0), ratings[rows].to(device))
        )
    decided = target != 0.5
    correct = int((((r_a - r_b) > 0) == (target > 0.5))[decided].sum())
    heads.train(was_training)
    return {
        "bt_loss": bt,
        "criterion_loss": crit,
        "loss": bt + config.criterion_weight * crit,
        "accuracy": correct / int(decided.sum()) if int(decided.sum()) else float("nan"),
    }


# --- saving the new encoder identity -------------------------------------------------------------


def _atomic_torch_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _encoder_path(config: FinetuneConfig) -> Path:
    out = Path(config.output_dir).expanduser().resolve()
    if config.encoder.startswith("hf:"):
        return out / f"{config.run_name}-hf"
    return out / f"{config.run_name}.encoder.pt"


def _heads_path(config: FinetuneConfig) -> Path:
    return Path(config.output_dir).expanduser().resolve() / f"{config.run_name}.heads.pt"


def _save_encoder(
    config: FinetuneConfig, encoder: Encoder, tuned: list[tuple[_Tower, str]]
) -> tuple[str, Path]:
    """Write the fine-tuned weights where the name scheme loads them; return (new name, path)."""
    path = _encoder_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(encoder, OpenClipEncoder):
        import open_clip

        arch = config.encoder.split(":", 2)[1]
        _atomic_torch_save({k: v.detach().cpu() for k, v in encoder.model.state_dict().items()}, path)
        # open_clip reads an architecture it does not know from <arch>.json beside the weights file;
        # written always, so the file loads in a fresh worker process too.
        beside = path.parent / f"{arch}.json"
        cfg = open_clip.get_model_config(arch)
        if not beside.exists() and cfg is not None:
            beside.write_text(json.dumps(cfg))
        return f"open_clip:{arch}:{path}", path
    if isinstance(encoder, HFEncoder):
        from transformers import AutoProcessor

        source = Path(config.encoder.split(":", 1)[1]).expanduser()
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            encoder.model.save_pretrained(tmp)
            AutoProcessor.from_pretrained(source, local_files_only=True).save_pretrained(tmp)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return f"hf:{path}", path
    # Offline: only the tensors fine-tuning changed, loaded over the packaged weights, plus the label
    # embeddings the heads were trained with (recomputing them with a tuned text tower would move
    # every image embedding).
    file_key = {"cnn": "cnn", "sentence.0.auto_model": "text"}
    payload: dict = {"format": OFFLINE_WEIGHTS_FORMAT, "base": config.encoder, "cnn": {}, "text": {}}
    for tower, prefix in tuned:
        state = tower.root.state_dict()
        payload[file_key[tower.root_key]].update(
            {k: v.detach().cpu().clone() for k, v in state.items() if _under(k, prefix)}
        )
    payload["label_embeddings"] = encoder.label_embeddings.detach().cpu().clone()
    _atomic_torch_save(payload, path)
    return f"{OFFLINE_DEFAULT}:{path}", path


# --- training -------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    encoder_name: str  # the new encoder identity, loadable with encoder_load
    base_encoder: str
    fingerprint: str  # the new encoder's fingerprint (its embedding cache folder)
    encoder_path: str
    heads_checkpoint: str
    heads_sha256: str
    model: RewardEnsemble
    # The fine-tuned encoder in memory (LoRA merged). Its name and fingerprint are still the base's:
    # scoring loads ``encoder_name`` instead, which carries the new identity.
    encoder: Encoder
    history: list[dict]
    epoch_seconds: list[float]
    best_epoch: int
    peak_memory_mb: float
    peak_memory_source: str
    trainable_parameters: int  # encoder parameters trained (LoRA: the adapters)
    head_parameters: int
    tuned_prefixes: list[str]  # tensors that may differ from the base encoder, as paths from the Encoder
    gradient_checkpointing: bool  # whether it was applied
    seconds: float = 0.0
    test_report: dict | None = None  # reward_model_evaluate on the held-out pairs, new encoder's features
    # Those features (TrainingData; only the test rows are filled), for breakdowns of the report.
    test_data: TrainingData | None = None

    @property
    def train_losses(self) -> list[float]:
        return [r["train_loss"] for r in self.history]

    @property
    def val_losses(self) -> list[float | None]:
        return [r.get("val_loss") for r in self.history]


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ru_maxrss (peak RSS of the whole process so far)",
    )


def _heads_build(config: FinetuneConfig, encoder: Encoder, data: FinetuneData, feats: _Features, rng):
    criteria = list(data.pairs.criteria)
    if config.init_checkpoint:
        try:
            heads, meta = load_checkpoint(config.init_checkpoint)
        except ValueError as exc:
            raise FinetuneError(str(exc)) from exc
        if meta.get("encoder") != config.encoder:
            raise FinetuneError(
                f"init_checkpoint {config.init_checkpoint} was trained on encoder {meta.get('encoder')!r}, "
                f"not {config.encoder!r}: its heads expect another encoder's features."
            )
        if list(heads.config.criteria) != criteria:
            raise FinetuneError(
                f"init_checkpoint {config.init_checkpoint} has criteria {heads.config.criteria}, the data "
                f"has {criteria}."
            )
        return heads.to(encoder.device)
    head = RewardHeadConfig(
        image_dim=encoder.image_feature_dim,
        text_dim=encoder.text_feature_dim,
        embed_dim=encoder.embed_dim,
        hidden=config.hidden,
        n_heads=config.n_heads,
        criteria=criteria,
        dropout=config.dropout,
    )
    heads = RewardEnsemble(head).to(encoder.device)
    # Standardisation from the base encoder's features of some training captions; it stays fixed while
    # the encoder moves (the heads learn around it, as they learn around any feature scale).
    ts = data.pairs.train
    rows = np.unique(np.concatenate([ts.a, ts.b]))
    if len(rows) > config.stats_rows:
        rows = np.sort(rng.choice(rows, config.stats_rows, replace=False))
    images, image_index = np.unique(data.pairs.image_of_row[rows], return_inverse=True)
    img = feats.images(images, grad=False)
    txt = feats.rows(rows, grad=False)
    heads.fit_feature_stats(img.cpu(), txt.cpu(), torch.as_tensor(image_index))
    return heads.to(encoder.device)


@torch.no_grad()
def _test_report(
    heads, feats: _Features, data: FinetuneData, encoder: Encoder, name: str
) -> tuple[dict | None, TrainingData | None]:
    """The held-out report on the fine-tuned encoder's features: the numbers the gate compares with the
    active frozen-head model's on the same pairs, and those features (rows outside the test split stay
    zero, never read), so a caller can break the report down without encoding again."""
    test = data.pairs.test
    if test is None or test.n_pairs == 0:
        return None, None
    rows = np.unique(np.concatenate([test.a, test.b, test.rated_rows]))
    images = np.unique(data.pairs.image_of_row[rows])
    img = np.zeros((len(data.images), encoder.image_feature_dim), np.float32)
    txt = np.zeros((len(data.texts), encoder.text_feature_dim), np.float32)
    img[images] = feats.images(images, grad=False).cpu().numpy()
    txt[rows] = feats.rows(rows, grad=False).cpu().numpy()
    td = replace(data.pairs, image_feats=img, text_feats=txt, embed_dim=encoder.embed_dim, encoder=name)
    return reward_model_evaluate(heads.cpu(), td, test), td


def finetune(
    config: FinetuneConfig,
    data: FinetuneData,
    progress: Callable[[int, int, dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Fine-tune ``config.encoder`` and fresh (or ``init_checkpoint``) heads on ``data.pairs.train``,
    early-stopping on the validation loss; save the new encoder and the heads; return what was made.

    ``progress(epoch, epochs, record)`` is called after every epoch; ``should_cancel()`` before every
    epoch: when it returns True, ``TrainingCancelled`` is raised and nothing is saved.
    """
    started = time.perf_counter()
    finetune_config_check(config)
    if data.pairs.train.n_pairs == 0:
        raise FinetuneError("No training pairs: every judgment needs at least two captions.")
    encoder_out, heads_out = _encoder_path(config), _heads_path(config)
    for path in (encoder_out, heads_out):
        if path.exists():
            raise FinetuneError(
                f"{path} already exists: a fine-tuned encoder is never overwritten (its name is its "
                "identity, and caches and reward models point to it). Choose another run_name."
            )
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    try:
        encoder = encoder_build(config.encoder, config.device)
    except EncoderError as exc:
        raise FinetuneError(str(exc)) from exc
    device = encoder.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    towers_all = _towers(encoder)
    _check_towers(config, towers_all)
    towers = [towers_all[t] for t in config.towers]
    if isinstance(encoder, OfflineEncoder):
        # Made under inference_mode at load; autograd cannot save such a tensor for backward.
        encoder.label_embeddings = encoder.label_embeddings.clone()

    roots = {id(t.root): t.root for t in towers_all.values()}
    for root in roots.values():
        root.eval()
        root.requires_grad_(False)
    lora_models = _lora_inject(config, towers) if config.mode == "lora" else []
    tuned = _tuned_prefixes(config, towers)
    encoder_params: dict[str, nn.Parameter] = {}
    for tower in towers:
        for name, param in tower.root.named_parameters():
            if config.mode == "lora":
                wanted = ".lora_" in name
            else:
                wanted = any(_under(name, p) for t, p in tuned if t is tower)
            if wanted:
                param.requires_grad_(True)
                encoder_params[f"{tower.root_key}.{name}"] = param
    checkpointing = False
    if config.gradient_checkpointing:
        for tower in towers:
            if tower.enable_checkpointing is not None:
                tower.enable_checkpointing()
                checkpointing = True

    crops = _crops(encoder, data.images)
    feats = _Features(encoder, crops, data.texts, config)
    heads = _heads_build(config, encoder, data, feats, rng)

    ts = data.pairs.train
    image_of_row = data.pairs.image_of_row
    pair_image = image_of_row[ts.a]
    n_images = len(data.images)
    if config.bootstrap and config.n_heads > 1:
        boot = rng.poisson(1.0, size=(config.n_heads, n_images)).astype(np.float32)
    else:
        boot = np.ones((config.n_heads, n_images), np.float32)
    boot_t = torch.as_tensor(boot, device=device)
    row_ratings = torch.as_tensor(
        _ratings_by_row(ts, len(image_of_row), len(data.pairs.criteria)), device=device
    )

    encoder_lr = config.encoder_lr if config.encoder_lr is not None else DEFAULT_ENCODER_LR[config.mode]
    optimizer = torch.optim.AdamW(
        [
            {"params": list(encoder_params.values()), "lr": encoder_lr},
            {"params": list(heads.parameters()), "lr": config.head_lr},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = max(1, math.ceil(ts.n_pairs / config.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    trainable = list(encoder_params.values()) + list(heads.parameters())
    has_validation = data.pairs.validation is not None and data.pairs.validation.n_pairs > 0

    history: list[dict] = []
    epoch_seconds: list[float] = []
    best_state, best_loss, best_epoch, stale = None, math.inf, 0, 0
    batch = config.batch_size
    try:
        for epoch in range(1, config.epochs + 1):
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(
                    f"Fine-tuning cancelled after {epoch - 1} of {config.epochs} epochs; nothing was saved.",
                    epoch - 1,
                    history,
                )
            t0 = time.perf_counter()
            heads.train()
            image_rank = rng.permutation(n_images)
            order = np.lexsort((rng.random(ts.n_pairs), image_rank[pair_image]))
            bt_total = crit_total = 0.0
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                n = len(idx)
                bt, crit = _batch_losses(heads, feats, data, idx, boot_t, row_ratings)
                loss = bt + config.criterion_weight * crit
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                bt_total += float(bt.detach()) * n
                crit_total += float(crit.detach()) * n
            record = {
                "epoch": epoch,
                "train_bt_loss": bt_total / ts.n_pairs,
                "train_criterion_loss": crit_total / ts.n_pairs,
            }
            record["train_loss"] = (
                record["train_bt_loss"] + config.criterion_weight * record["train_criterion_loss"]
            )
            if has_validation:
                val = _split_metrics(heads, feats, data, data.pairs.validation, config)
                record.update({f"val_{k}": v for k, v in val.items()})
                current = val["loss"]
            else:
                current = record["train_loss"]
            epoch_seconds.append(time.perf_counter() - t0)
            record["seconds"] = round(epoch_seconds[-1], 3)
            history.append(record)
            if progress is not None:
                progress(epoch, config.epochs, record)
            if current < best_loss - 1e-5:
                best_loss, best_epoch, stale = current, epoch, 0
                best_state = (
                    {k: p.detach().clone() for k, p in encoder_params.items()},
                    copy.deepcopy(heads.state_dict()),
                )
            else:
                stale += 1
                if has_validation and stale >= config.patience:
                    break
    except torch.OutOfMemoryError as exc:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        hint = "" if checkpointing else " or gradient_checkpointing=True"
        raise FinetuneError(
            f"Out of GPU memory fine-tuning {config.encoder!r} ({config.mode}, towers "
            f"{', '.join(config.towers)}, blocks {config.blocks}) at batch_size={batch}. Try "
            f"batch_size={max(1, batch // 2)}{hint}."
        ) from exc

    if best_state is not None:
        with torch.no_grad():
            for k, p in encoder_params.items():
                p.copy_(best_state[0][k])
        heads.load_state_dict(best_state[1])
    heads.eval()
    peak_mb, peak_source = _peak_memory(device)

    # Fold the adapters into the base weights: the saved encoder is a plain model of its kind.
    for wrapped in lora_models:
        wrapped.merge_and_unload()
    for root in roots.values():
        root.requires_grad_(False)
        root.eval()  # also clears the training flag the checkpointed transformers layers were given
        if checkpointing:
            disable = getattr(root, "activation_checkpointing_disable", None) or getattr(
                root, "gradient_checkpointing_disable", None
            )
            if disable is not None:
                disable()
    if checkpointing and isinstance(encoder, OpenClipEncoder):
        encoder.model.set_grad_checkpointing(False)

    new_name, path = _save_encoder(config, encoder, tuned)
    fingerprint = encoder_fingerprint(new_name)

    test_report, test_data = (
        _test_report(heads, feats, data, encoder, new_name) if config.evaluate_test else (None, None)
    )
    heads = heads.cpu()
    meta = {
        "encoder": new_name,
        "base_encoder": config.encoder,
        "criteria": list(data.pairs.criteria),
        "embed_dim": encoder.embed_dim,
        "image_dim": encoder.image_feature_dim,
        "text_dim": encoder.text_feature_dim,
        "trained_at": datetime.now(UTC).isoformat(),
        "finetune": {**asdict(config), "towers": list(config.towers), "meta": None},
        "best_epoch": best_epoch,
        **config.meta,
    }
    heads_sha = save_checkpoint(heads_out, heads, meta)
    return FinetuneResult(
        encoder_name=new_name,
        base_encoder=config.encoder,
        fingerprint=fingerprint,
        encoder_path=str(path),
        heads_checkpoint=str(heads_out),
        heads_sha256=heads_sha,
        model=heads,
        encoder=encoder,
        history=history,
        epoch_seconds=epoch_seconds,
        best_epoch=best_epoch,
        peak_memory_mb=round(peak_mb, 1),
        peak_memory_source=peak_source,
        trainable_parameters=sum(p.numel() for p in encoder_params.values()),
        head_parameters=sum(p.numel() for p in heads.parameters()),
        tuned_prefixes=[f"{t.root_key}.{p}" for t, p in tuned],
        gradient_checkpointing=checkpointing,
        seconds=time.perf_counter() - started,
        test_report=test_report,
        test_data=test_data,
    )
