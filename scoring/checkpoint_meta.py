"""A reward checkpoint's description (head config, encoder, criteria, version) as a small JSON file
beside it, so run services and pages can check a checkpoint against an encoder without importing
torch. ``save_checkpoint`` writes it; checkpoints saved before it existed simply have none."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def checkpoint_meta_path(checkpoint: str | os.PathLike) -> Path:
    return Path(f"{checkpoint}.meta.json")


def checkpoint_meta_write(checkpoint: str | os.PathLike, description: dict) -> None:
    path = checkpoint_meta_path(checkpoint)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(description, handle, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_meta_read(checkpoint: str | os.PathLike) -> dict | None:
    """The ``meta`` part of the description, or None when there is no readable sidecar."""
    try:
        description = json.loads(checkpoint_meta_path(checkpoint).read_text())
    except (OSError, ValueError):
        return None
    meta = description.get("meta") if isinstance(description, dict) else None
    return meta if isinstance(meta, dict) else None
