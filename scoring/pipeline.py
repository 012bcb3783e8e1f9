"""Batched image embedding from files or from images indexed in place (a ``pool.storage.Locator``: a
byte range of a shard, a Parquet cell, a file on an object store): decoding in DataLoader worker
processes, pinned memory, and JPEG decoding on the GPU when one is present. Plain PyTorch, no Django:
workers read through ``pool.storage``, which has none either.

CPU path: workers open each file (PIL with JPEG draft mode, so a large JPEG is decoded at reduced
scale), resize and centre-crop, and hand uint8 crops to the main process, which normalises and runs
the encoder (fp32, or bf16 autocast where ``LOUPE_CPU_BF16`` says it was measured faster).

GPU path: workers only read bytes; JPEGs are decoded in a batch by nvJPEG
(``torchvision.io.decode_jpeg(device="cuda")``), resized on the GPU, and encoded under bf16 autocast.
Other formats, and JPEGs nvJPEG rejects, fall back to PIL. Not measured in this session (no GPU).

An unreadable image never stops the batch: its row is zeros and its index is reported with the reason.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import DataLoader, Dataset

from pool.storage import Locator, locator_read
from scoring.encoders import Encoder, ImagePreprocess

JPEG_MAGIC = b"\xff\xd8\xff"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


@dataclass
class _Item:
    index: int
    crop: torch.Tensor | None = None  # uint8 [3, S, S]
    raw: torch.Tensor | None = None  # uint8 JPEG bytes, decoded on the GPU
    error: str = ""

    def pin_memory(self) -> _Item:
        # DataLoader(pin_memory=True) calls this on custom batch elements; without it nothing is pinned.
        if self.crop is not None:
            self.crop = self.crop.pin_memory()
        if self.raw is not None:
            self.raw = self.raw.pin_memory()
        return self


class ImageFiles(Dataset):
    """Images by path (a local file) or by ``Locator`` (bytes read where they are, sha256-checked)."""

    def __init__(self, paths: list[str | Locator], preprocess: ImagePreprocess, gpu_jpeg: bool = False):
        self.paths = list(paths)
        self.preprocess = preprocess
        self.gpu_jpeg = gpu_jpeg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        path = self.paths[index]
        try:
            if isinstance(path, Locator):
                data = locator_read(path)
            elif self.gpu_jpeg:
                with open(path, "rb") as handle:
                    data = handle.read()
            else:
                return _Item(index, crop=self.preprocess.to_uint8(self.preprocess.load(path)))
            if self.gpu_jpeg and data[:3] == JPEG_MAGIC:
                return _Item(index, raw=torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return _Item(index, crop=self.preprocess.to_uint8(self.preprocess.load(io.BytesIO(data))))
        except Exception as exc:  # noqa: BLE001 - any unreadable file becomes a per-row error
            where = path.describe() if isinstance(path, Locator) else path
            return _Item(index, error=f"cannot read image {where}: {_reason(exc)}")


def _collate(items: list[_Item]) -> list[_Item]:
    return items


def loader_workers_default(n_images: int, batch_size: int) -> int:
    env = os.environ.get("LOUPE_SCORING_LOADER_WORKERS")
    if env is not None:
        return max(0, int(env))
    # A daemonic process (Celery prefork child) may not start children.
    if multiprocessing.current_process().daemon:
        return 0
    if n_images < 2 * batch_size:
        return 0  # starting workers costs more than decoding a handful of images
    cpus = os.cpu_count() or 1
    return min(8 if torch.cuda.is_available() else 4, max(1, cpus - 1))


def batch_size_default(encoder: Encoder) -> int:
    env = os.environ.get("LOUPE_SCORING_BATCH_SIZE")
    if env:
        return int(env)
    return 1024 if encoder.device.type == "cuda" else 128


def _gpu_decode(items: list[_Item], preprocess: ImagePreprocess, device: torch.device) -> None:
    """Fill ``crop`` of the raw-JPEG items, on the GPU; nvJPEG failures fall back to PIL per image."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [it for it in items if it.raw is not None]
    if not raw:
        return
    try:
        decoded = decode_jpeg([it.raw for it in raw], mode=ImageReadMode.RGB, device=device)
    except Exception:  # noqa: BLE001 - one bad JPEG fails the whole batch call; retry one by one
        decoded = []
        for it in raw:
            try:
                decoded.append(decode_jpeg(it.raw, mode=ImageReadMode.RGB, device=device))
            except Exception:  # noqa: BLE001
                decoded.append(None)
    for it, img in zip(raw, decoded, strict=True):
        try:
            if img is None:  # progressive/CMYK JPEGs nvJPEG cannot take, or a corrupt file
                pil = PILImage.open(io.BytesIO(it.raw.numpy().tobytes()))
                it.crop = preprocess.to_uint8(pil).to(device)
            else:
                it.crop = preprocess.resize_crop_tensor(img)
        except Exception as exc:  # noqa: BLE001
            it.error = f"cannot decode image: {_reason(exc)}"
        it.raw = None


def images_embed(
    encoder: Encoder,
    paths: list[str | Locator],
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress=None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Features of the images at ``paths`` (file paths or ``Locator``s): (float32 [N, image_feature_dim],
    {index: why unreadable})."""
    out = np.zeros((len(paths), encoder.image_feature_dim), dtype=np.float32)
    errors: dict[int, str] = {}
    if not paths:
        return out, errors
    batch_size = batch_size or batch_size_default(encoder)
    num_workers = loader_workers_default(len(paths), batch_size) if num_workers is None else num_workers
    on_gpu = encoder.device.type == "cuda"
    dataset = ImageFiles(paths, encoder.preprocess, gpu_jpeg=on_gpu)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=on_gpu,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
    )
    for items in loader:
        if on_gpu:
            _gpu_decode(items, encoder.preprocess, encoder.device)
        good = [it for it in items if not it.error and it.crop is not None]
        for it in items:
            if it.error:
                errors[it.index] = it.error
        if good:
            crops = torch.stack([it.crop.to(encoder.device, non_blocking=True) for it in good])
            feats = encoder.encode_images(crops)
            out[[it.index for it in good]] = feats.numpy()
        if progress is not None:
            progress(len(items))
    return out, errors


def texts_embed(
    encoder: Encoder, texts: list[str], *, batch_size: int = 1024
) -> tuple[np.ndarray, list[bool]]:
    """Features of ``texts`` (float32 [N, text_feature_dim]) and whether each was truncated."""
    out = np.zeros((len(texts), encoder.text_feature_dim), dtype=np.float32)
    truncated: list[bool] = []
    for start in range(0, len(texts), batch_size):
        feats, trunc = encoder.encode_texts(texts[start : start + batch_size])
        out[start : start + len(trunc)] = feats.numpy()
        truncated.extend(trunc)
    return out, truncated
