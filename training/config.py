"""The reward heads' training configuration: a plain dataclass, importable without torch (forms, views
and run rows build and store it; ``training.train`` uses it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    lr: float = 3e-3
    # Upper bound: early stopping on the validation loss usually ends training before it. Frozen
    # features make each epoch cheap and informative, so few are needed.
    epochs: int = 20
    # Pairs per step. Large batches suit a frozen-feature head: the gradient is cheap and smooth.
    batch_size: int = 2048
    # AdamW decay: the heads see far more input dimensions than there are judgments.
    weight_decay: float = 1e-2
    seed: int = 0
    n_heads: int = 5
    # Per member. 64 is ample for tens of thousands of pairs and keeps 10,000 judgments under a minute
    # on two CPU cores.
    hidden: int = 64
    dropout: float = 0.1
    # The ratings are a secondary signal; the ranking loss is what the gate measures.
    criterion_weight: float = 0.5
    # Stop after this many epochs without a better validation loss, and keep the best weights.
    patience: int = 4
    # Each ensemble member sees its own bootstrap resample of the training images (Poisson(1)
    # weights): with independent inits this is what makes the members' spread an uncertainty.
    bootstrap: bool = True
    device: str = "cpu"
    # Refused: these heads train on cached features. Fine-tuning the encoder is training/finetune.py,
    # which makes a new encoder identity (its own weights file, fingerprint and cache).
    finetune_encoder_blocks: int = 0

    def __post_init__(self) -> None:
        if self.finetune_encoder_blocks:
            raise ValueError(
                "Fine-tuning the encoder is not implemented in TrainConfig: these reward heads train on "
                "cached, frozen features. Use training.finetune.finetune(FinetuneConfig(encoder=..., "
                "mode='last_blocks', blocks=N), data), which saves a new encoder. Set "
                "finetune_encoder_blocks to 0."
            )
        if self.epochs < 1 or self.batch_size < 1 or self.n_heads < 1:
            raise ValueError("epochs, batch_size and n_heads must be at least 1.")
