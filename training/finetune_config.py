"""The fine-tuning request: its config, its check and its errors. No torch here, so the web tier (the
training form, ``training_run_create``) can refuse a bad request before anything is queued;
``training/finetune.py`` does the work and re-exports these names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from scoring.encoder_names import OFFLINE_DEFAULT, EncoderError, encoder_name_check

MODES = ("last_blocks", "lora")
TOWERS = ("image", "text")
# The same floor as training.data.DEFAULT_MIN_JUDGMENTS (setting LOUPE_REWARD_MIN_JUDGMENTS), which
# cannot be imported here without Django; the Django caller passes ``min_judgments()``.
DEFAULT_MIN_JUDGMENTS = 30
# Learning rates of the encoder when the config leaves it unset: a pretrained tower drifts far with the
# heads' rate, while LoRA's zero-initialised adapters need a larger one to move at all.
DEFAULT_ENCODER_LR = {"last_blocks": 1e-5, "lora": 1e-4}


class FinetuneError(ValueError):
    """A fine-tuning request that cannot run; the message says why and what is possible instead."""


class TrainingCancelled(RuntimeError):
    """The cancel callback asked to stop; raised between epochs, before anything is saved. One class
    for the frozen heads (``training.train``) and fine-tuning, so callers catch one thing."""

    def __init__(self, message: str, epochs_done: int = 0, history: list[dict] | None = None):
        super().__init__(message)
        self.epochs_done = epochs_done
        self.history = history or []


@dataclass
class FinetuneConfig:
    encoder: str  # the base encoder's name, e.g. open_clip:ViT-B-32:/models/vit-b-32.pt
    output_dir: str  # where the new encoder weights and the heads checkpoint are written
    # Files: <run_name>.encoder.pt (open_clip, offline) or <run_name>-hf/ (transformers), and
    # <run_name>.heads.pt. Never overwritten: a fine-tuned encoder's weights must not change under its name.
    run_name: str = "finetuned"
    mode: str = "last_blocks"
    towers: tuple[str, ...] = ("image", "text")
    # last_blocks: how many of each tower's last blocks to unfreeze. lora: adapters go into the last
    # ``blocks`` blocks, 0 = every block.
    blocks: int = 2
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    encoder_lr: float | None = None  # None: DEFAULT_ENCODER_LR of the mode
    head_lr: float = 1e-3
    weight_decay: float = 1e-2
    # Fine-tuning sees each pair several times at a small rate; early stopping usually ends it sooner.
    epochs: int = 5
    # Pairs per step, grouped by image so an image is encoded once for all its captions' pairs.
    batch_size: int = 64
    patience: int = 2
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str | None = None  # None: CUDA when available
    mixed_precision: bool = True  # bf16 autocast on CUDA; always off on the CPU
    gradient_checkpointing: bool = False  # where the model supports it (open_clip, transformers)
    # last_blocks on the offline encoder's image tower: run the frozen blocks below the trained ones once
    # per image and keep their output (about 37 KB per image for the last 2 blocks), instead of in every
    # step. Same results; several times faster epochs (docs/finetune.md). No effect elsewhere.
    cache_frozen_prefix: bool = True
    # The heads, as in TrainConfig.
    n_heads: int = 5
    hidden: int = 64
    dropout: float = 0.1
    criterion_weight: float = 0.5
    bootstrap: bool = True
    # Start the heads from a frozen-head checkpoint of the same base encoder (linear probe, then
    # fine-tune: the encoder then moves less in the first steps). Empty: fresh heads.
    init_checkpoint: str = ""
    # Captions whose features fit the heads' standardisation (fresh heads only).
    stats_rows: int = 512
    evaluate_test: bool = True
    meta: dict = field(default_factory=dict)  # extra meta for the heads checkpoint (version, campaign)

    def __post_init__(self) -> None:
        self.towers = tuple(self.towers)


def finetune_config_check(config: FinetuneConfig) -> None:
    """Refuse a request that cannot work, without loading anything (a form can call this)."""
    if config.mode not in MODES:
        raise FinetuneError(f"Fine-tuning mode {config.mode!r} is not one of {', '.join(MODES)}.")
    if (
        not config.towers
        or any(t not in TOWERS for t in config.towers)
        or len(set(config.towers)) != len(config.towers)
    ):
        raise FinetuneError(f"towers {config.towers!r} must be one or both of {', '.join(TOWERS)}.")
    if config.mode == "last_blocks" and config.blocks < 1:
        raise FinetuneError("last_blocks needs blocks >= 1 (how many of each tower's last blocks to train).")
    if config.blocks < 0:
        raise FinetuneError("blocks must be 0 (LoRA: every block) or more.")
    if config.mode == "lora" and config.lora_r < 1:
        raise FinetuneError("lora_r must be at least 1.")
    if config.epochs < 1 or config.batch_size < 1 or config.n_heads < 1:
        raise FinetuneError("epochs, batch_size and n_heads must be at least 1.")
    if not config.output_dir:
        raise FinetuneError("output_dir is required: the fine-tuned encoder is saved there.")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", config.run_name):
        raise FinetuneError(f"run_name {config.run_name!r} may only hold letters, digits, '.', '_' and '-'.")
    if config.encoder.startswith("vlm:"):
        raise FinetuneError(
            f"{config.encoder!r} is a multimodal judge (scoring/vlm.py), not an image-text encoder: it has no "
            "embeddings for the reward heads and cannot be fine-tuned here. Fine-tune an encoder: "
            f"open_clip:<arch>:<weights file>, hf:<local dir> or {OFFLINE_DEFAULT}."
        )
    try:
        encoder_name_check(config.encoder)
    except EncoderError as exc:
        raise FinetuneError(str(exc)) from exc
    if config.encoder.startswith("offline:") and config.mode == "lora" and "image" in config.towers:
        raise FinetuneError(
            f"{OFFLINE_DEFAULT}'s image tower is EfficientNet-Lite0, a convolutional network: LoRA adapters "
            "here go on attention and MLP linear layers, which it does not have. Use mode='last_blocks' "
            "for the image tower (its last MBConv blocks), or LoRA on the MiniLM text tower only "
            "(towers=('text',))."
        )


def finetune_params_check(params: dict, *, base_encoder: str) -> dict:
    """A TrainingRun's ``params["finetune"]`` (mode, blocks, towers, ...) checked against its base encoder;
    returns the cleaned dict to store. The run supplies ``encoder``, ``output_dir`` and ``run_name``."""
    known = set(FinetuneConfig.__dataclass_fields__) - {"encoder", "output_dir", "run_name", "meta"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise FinetuneError(
            f"Unknown fine-tuning settings: {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
        )
    try:
        config = FinetuneConfig(encoder=base_encoder, output_dir="<model dir>/encoders", **params)
    except TypeError as exc:
        raise FinetuneError(f"Fine-tuning settings {params!r} are not valid: {exc}") from exc
    finetune_config_check(config)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
