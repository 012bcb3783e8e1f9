"""A tiny open_clip model with random weights, saved to a file and loaded the way users load theirs.

Other apps' tests use it too: ``from tests.scoring.tiny_clip import tiny_clip_encoder_name``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_ARCH = "loupe-tiny-clip"

# Few layers, small width, 32 px images: a forward pass over a few hundred images takes well under a
# second on a CPU. The vocabulary stays open_clip's (the bundled BPE tokenizer needs it).
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_clip_files(directory: str | Path, seed: int = 0) -> Path:
    """Write ``loupe-tiny-clip.json`` and random weights into ``directory``; return the weights path."""
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"{TINY_ARCH}.json"
    config_path.write_text(json.dumps(TINY_CONFIG))
    weights = directory / f"{TINY_ARCH}-seed{seed}.pt"
    if not weights.exists():
        open_clip.add_model_config(config_path)
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_ARCH, pretrained=None)
        torch.save(model.state_dict(), weights)
    return weights


def tiny_clip_encoder_name(directory: str | Path, seed: int = 0) -> str:
    """An encoder name ``open_clip:loupe-tiny-clip:<file>`` usable with ``encoder_load``."""
    return f"open_clip:{TINY_ARCH}:{tiny_clip_files(directory, seed)}"
