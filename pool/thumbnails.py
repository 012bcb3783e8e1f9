"""Thumbnails of pool images for the browser: made once from the bytes where the image lives, kept on
disk under MEDIA_ROOT/thumbs (content-addressed, so a thumbnail is shared by every row of the same
bytes and never goes stale)."""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path

from django.conf import settings
from PIL import Image as PILImage

from pool.images import ImageRejected
from pool.locate import image_read


def thumbnail_path(sha256: str, size: int | None = None) -> Path:
    size = size or settings.LOUPE_THUMB_SIZE
    return Path(settings.MEDIA_ROOT) / "thumbs" / sha256[:2] / f"{sha256}-{size}.jpg"


def thumbnail_make(image, *, size: int | None = None) -> Path:
    """The thumbnail's file, made now if it is not there yet. Raises ``pool.storage.StorageError``
    when the image's bytes cannot be read, ``ImageRejected`` when they do not decode."""
    size = size or settings.LOUPE_THUMB_SIZE
    target = thumbnail_path(image.sha256, size)
    if target.exists():
        return target
    data = image_read(image)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as img:
                if img.width * img.height > settings.LOUPE_MAX_IMAGE_PIXELS:
                    raise ImageRejected(
                        "too_many_pixels", f"{img.width}x{img.height} is over the pixel limit"
                    )
                img.draft("RGB", (size, size))  # JPEG: decode at reduced scale
                img = img.convert("RGB")
                img.thumbnail((size, size))
                buffer = io.BytesIO()
                img.save(buffer, format="JPEG", quality=85)
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error: the page shows a placeholder
        raise ImageRejected("corrupt_image", f"cannot decode the image ({exc})") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{os.getpid()}-{threading.get_ident()}-{target.name}"
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, target)  # two requests for the same thumbnail both write it whole; one wins
    return target
