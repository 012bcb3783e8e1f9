"""Encoder names and their validation, without loading anything: forms, views and run services check a
name here without importing torch (the web tier never does). ``scoring.encoders`` builds them."""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_DEFAULT = "offline:effnet-minilm"


class EncoderError(ValueError):
    """An encoder name or weights file that cannot be used; the message says which and why."""


def encoder_name_check(name: str) -> None:
    """Validate the shape of a name without loading anything (forms call this)."""
    kind, _, rest = name.partition(":")
    if kind == "offline" and rest == "effnet-minilm":
        return
    if kind == "open_clip":
        arch, sep, pretrained = rest.partition(":")
        if arch and sep and pretrained:
            looks_like_file = os.sep in pretrained or Path(pretrained).suffix != ""
            if looks_like_file and not os.access(Path(pretrained).expanduser(), os.R_OK):
                raise EncoderError(
                    f"Encoder {name!r}: weights file {pretrained} does not exist or is unreadable."
                )
            return
        raise EncoderError(
            f"Encoder name {name!r}: expected open_clip:<arch>:<pretrained tag or weights file>."
        )
    if kind == "hf" and rest:
        if not Path(rest).expanduser().is_dir():
            raise EncoderError(f"Encoder {name!r}: {rest} is not a directory with a transformers checkpoint.")
        return
    raise EncoderError(
        f"Unknown encoder {name!r}: use open_clip:<arch>:<tag or weights file>, hf:<local dir> or "
        f"{OFFLINE_DEFAULT}."
    )


VLM_PREFIX = "vlm:"


def is_vlm(name: str) -> bool:
    """A multimodal judge (image-text-to-text model) rather than a dual encoder."""
    return name.startswith(VLM_PREFIX)


def vlm_name_check(name: str) -> None:
    """``vlm:<local dir>`` or ``vlm:<hub id>`` (e.g. ``vlm:Qwen/Qwen2-VL-2B-Instruct``, for users with
    internet). Only the shape and a local directory's existence are checked here; loading checks the rest."""
    if not is_vlm(name) or not name[len(VLM_PREFIX) :].strip():
        raise EncoderError(f"Judge name {name!r}: expected vlm:<local checkpoint dir> or vlm:<hub id>.")
    target = name[len(VLM_PREFIX) :]
    looks_local = (
        target.startswith(("/", ".", "~")) or os.sep in target and Path(target).expanduser().exists()
    )
    if looks_local and not Path(target).expanduser().is_dir():
        raise EncoderError(f"Judge {name!r}: {target} is not a directory with a transformers checkpoint.")
