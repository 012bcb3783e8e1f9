"""Reading, validating and (for the few that are materialised) storing pool images.

Indexing in place reads each image's header only (``image_header``: format, size, the pixel limit),
which costs microseconds; the full decode (``image_inspect``: a real, fully decodable raster image,
with its perceptual hash) happens once per image later (``pool.inspection``). ``image_store`` writes a
content-addressed copy (how images were stored before pools were indexed in place; kept for
tools that materialise an image).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import imagehash
from django.conf import settings
from PIL import Image as PILImage
from PIL import ImageFile, UnidentifiedImageError

# Raster formats the pool accepts, with the extension of the stored copy.
FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tif",
}
_tmp_counter = itertools.count()
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class ImageRejected(Exception):
    """An input that is not a usable image. ``code`` is the summary bucket, the message is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    phash: str
    width: int
    height: int
    format: str
    size: int

    @property
    def extension(self) -> str:
        return FORMAT_EXTENSIONS[self.format]

    @property
    def relative_path(self) -> str:
        return f"images/{self.sha256[:2]}/{self.sha256}.{self.extension}"


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG extension) and CC (DAC) share the range.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # stand-alone markers
            i += 2
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return None


def _fast_header(data: bytes) -> ImageHeader | None:
    """Format and size from the first bytes of the common formats, without Pillow (60 µs a JPEG)."""
    if data[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
        return ImageHeader("JPEG", *size) if size else None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return ImageHeader("PNG", *struct.unpack_from(">II", data, 16))
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ImageHeader("GIF", *struct.unpack_from("<HH", data, 6))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        chunk = data[12:16]
        if chunk == b"VP8 " and len(data) >= 30:
            w, h = struct.unpack_from("<HH", data, 26)
            return ImageHeader("WEBP", w & 0x3FFF, h & 0x3FFF)
        if chunk == b"VP8L" and len(data) >= 25:
            bits = int.from_bytes(data[21:25], "little")
            return ImageHeader("WEBP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        if chunk == b"VP8X" and len(data) >= 30:
            return ImageHeader(
                "WEBP", int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
            )
    return None


def image_header(data: bytes, *, max_pixels: int | None = None) -> ImageHeader:
    """Format and size from the header alone, and the pixel limit; ``ImageRejected`` when the bytes are
    not a raster image of an accepted format, or claim too many pixels (a decompression bomb costs
    nothing here). Truncated or corrupt data passes: only a full decode finds it."""
    limit = settings.LOUPE_MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    _refuse_empty(data)
    header = _fast_header(data)
    if header is None:
        _refuse_markup(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                with PILImage.open(io.BytesIO(data)) as img:
                    header = ImageHeader(img.format or "", *img.size)
        except PILImage.DecompressionBombError as exc:
            raise ImageRejected(
                "too_many_pixels", f"over the pixel limit of {limit:,} (possible decompression bomb: {exc})"
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageRejected("not_an_image", "not an image (unrecognised file format)") from exc
        except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, struct.error) as exc:
            raise ImageRejected("corrupt_image", f"unreadable image header ({exc})") from exc
    if header.format not in FORMAT_EXTENSIONS:
        raise ImageRejected("not_an_image", f"unsupported image format {header.format or 'unknown'}")
    if header.width <= 0 or header.height <= 0:
        raise ImageRejected("corrupt_image", f"invalid size {header.width}x{header.height}")
    if header.width * header.height > limit:
        raise ImageRejected(
            "too_many_pixels",
            f"{header.width}x{header.height} = {header.width * header.height:,} pixels is over the limit of "
            f"{limit:,} (possible decompression bomb)",
        )
    return header


def _refuse_empty(data: bytes) -> None:
    if not data:
        raise ImageRejected("not_an_image", "empty file")


def _refuse_markup(data: bytes) -> None:
    markup = _sniff_markup(data)
    if markup:
        raise ImageRejected("not_an_image", f"not a raster image ({markup} text)")


def _sniff_markup(data: bytes) -> str | None:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<?xml") or head.startswith(b"<svg") or b"<svg" in head:
        return "SVG"
    if head.startswith(b"<!doctype html") or head.startswith(b"<html"):
        return "HTML"
    if head.startswith(b"<"):
        return "markup"
    return None


def image_inspect(data: bytes, *, max_pixels: int | None = None) -> ImageInfo:
    """Validate ``data`` as a raster image and describe it; raise ``ImageRejected`` with a reason if not.

    The pixel limit is checked from the header before anything is decoded, so a decompression bomb
    costs nothing; ``verify()`` catches broken structure and a full decode catches truncated data.
    """
    info, img = image_decode(data, max_pixels=max_pixels)
    img.close()
    return info


def image_decode(data: bytes, *, max_pixels: int | None = None) -> tuple[ImageInfo, PILImage.Image]:
    """``image_inspect`` that also returns the decoded picture (fully loaded, the caller closes it), so
    one decode can feed the checks, the perceptual hash and an encoder's preprocessing (the shard pass)."""
    limit = settings.LOUPE_MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    _refuse_empty(data)
    _refuse_markup(data)
    img = None
    try:
        with warnings.catch_warnings():
            # Our own limit decides; Pillow's warning would only be noise here.
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            img = PILImage.open(io.BytesIO(data))
            fmt = img.format or ""
            width, height = img.size
            if fmt not in FORMAT_EXTENSIONS:
                raise ImageRejected("not_an_image", f"unsupported image format {fmt or 'unknown'}")
            if width <= 0 or height <= 0:
                raise ImageRejected("corrupt_image", f"invalid size {width}x{height}")
            if width * height > limit:
                raise ImageRejected(
                    "too_many_pixels",
                    f"{width}x{height} = {width * height:,} pixels is over the limit of {limit:,} "
                    "(possible decompression bomb)",
                )
            # Only some formats check more in verify() than a decode does (PNG: chunk CRCs); for the
            # others it is a no-op, and skipping it saves the second open.
            if type(img).verify is not ImageFile.ImageFile.verify:
                img.verify()
                # verify() leaves the image unusable: decode a fresh one fully to catch truncation.
                img.close()
                img = PILImage.open(io.BytesIO(data))
            img.load()
            phash = str(imagehash.phash(img))
    except BaseException as exc:
        if img is not None:
            img.close()
        if isinstance(exc, ImageRejected):
            raise
        if isinstance(exc, PILImage.DecompressionBombError):
            raise ImageRejected(
                "too_many_pixels", f"over the pixel limit of {limit:,} (possible decompression bomb: {exc})"
            ) from exc
        if isinstance(exc, UnidentifiedImageError):
            raise ImageRejected("not_an_image", "not an image (unrecognised file format)") from exc
        if isinstance(exc, OSError | SyntaxError | ValueError | EOFError | TypeError | IndexError):
            raise ImageRejected("corrupt_image", f"corrupt or truncated image ({exc})") from exc
        raise
    info = ImageInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        phash=phash,
        width=width,
        height=height,
        format=fmt,
        size=len(data),
    )
    return info, img


def image_store(*, data: bytes, info: ImageInfo, media_root: Path | None = None) -> str:
    """Write the content-addressed copy (once) and return its path relative to MEDIA_ROOT.

    Written to a temporary file in the target folder and renamed into place, so a crash never leaves
    a half-written image under its final name; a concurrent writer of the same bytes is harmless.
    """
    root = Path(media_root or settings.MEDIA_ROOT)
    relative = info.relative_path
    target = root / relative
    if target.exists() and target.stat().st_size == info.size:
        return relative
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and call: cheaper than mkstemp's random names, and O_EXCL still guards it.
    tmp_name = str(target.parent / f".tmp-{os.getpid()}-{threading.get_ident()}-{next(_tmp_counter)}")
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            # No fsync: the rename already guarantees no half-written file after a crashed process,
            # and an fsync per image would dominate the import time of small images.
            handle.write(data)
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return relative
