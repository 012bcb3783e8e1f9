"""Which reward model is active, per encoder, as a small JSON pointer file beside the checkpoints.

``training`` writes the pointer when the gate promotes a model (or an admin rolls back); ``scoring``
reads it. A file rather than a query keeps the dependency one way (scoring never imports training)
and lets GPU workers on other machines see the active model through the shared volume.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from django.conf import settings


@dataclass(frozen=True)
class ActiveModel:
    encoder: str
    version: int
    checkpoint: str
    checkpoint_sha256: str


def _pointer_path(encoder: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder)
    return Path(settings.MODEL_DIR) / "active" / f"{slug}.json"


def active_model_get(*, encoder: str) -> ActiveModel | None:
    path = _pointer_path(encoder)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return ActiveModel(**data)


def active_model_set(*, model: ActiveModel | None, encoder: str) -> None:
    """Point ``encoder`` at ``model`` (None clears it). Atomic: readers see the old or the new file."""
    path = _pointer_path(encoder)
    if model is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(model), handle)
    os.replace(tmp, path)


# The encoder the loop trains, scores and flags with. It starts as LOUPE_DEFAULT_ENCODER; promoting a
# model whose encoder was fine-tuned switches it (the pool is then rescored with that encoder), and it
# must survive restarts without anyone editing the environment, so it is a pointer file like the above.
def _loop_encoder_path() -> Path:
    return Path(settings.MODEL_DIR) / "loop_encoder.json"


def loop_encoder_get() -> str:
    """The loop's encoder: the pointer's when a fine-tuned model was promoted, else the default."""
    path = _loop_encoder_path()
    if path.exists():
        encoder = json.loads(path.read_text()).get("encoder")
        if encoder:
            return encoder
    return settings.LOUPE_DEFAULT_ENCODER


def loop_encoder_set(*, encoder: str | None) -> None:
    """Point the loop at ``encoder`` (None: back to LOUPE_DEFAULT_ENCODER). Atomic like the model pointers."""
    path = _loop_encoder_path()
    if encoder is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump({"encoder": encoder}, handle)
    os.replace(tmp, path)
