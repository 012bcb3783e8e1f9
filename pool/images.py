"""Opening, validating and storing pool images.

Every image that enters the pool passes ``image_inspect`` (a real, fully decodable raster image under the
pixel limit) and is stored once, content-addressed, by ``image_store``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
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
    limit = settings.LOUPE_MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise ImageRejected("not_an_image", "empty file")
    markup = _sniff_markup(data)
    if markup:
        raise ImageRejected("not_an_image", f"not a raster image ({markup} text)")
    try:
        with warnings.catch_warnings():
            # Our own limit decides; Pillow's warning would only be noise here.
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as img:
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
                structural = type(img).verify is not ImageFile.ImageFile.verify
                if structural:
                    img.verify()
                else:
                    img.load()
                    phash = str(imagehash.phash(img))
            if structural:
                # verify() leaves the image unusable: decode a fresh one fully to catch truncation.
                with PILImage.open(io.BytesIO(data)) as img:
                    img.load()
                    phash = str(imagehash.phash(img))
    except ImageRejected:
        raise
    except PILImage.DecompressionBombError as exc:
        raise ImageRejected(
            "too_many_pixels", f"over the pixel limit of {limit:,} (possible decompression bomb: {exc})"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_an_image", "not an image (unrecognised file format)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError) as exc:
        raise ImageRejected("corrupt_image", f"corrupt or truncated image ({exc})") from exc
    return ImageInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        phash=phash,
        width=width,
        height=height,
        format=fmt,
        size=len(data),
    )


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
