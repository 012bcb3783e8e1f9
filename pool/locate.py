"""Where an image's bytes are, as a plain ``pool.storage.Locator``: for pages, scoring, exports.

``LOCATOR_FIELDS`` are the columns a query needs (relative to the image) to build one without loading
model instances; ``image_read`` returns the bytes, checked against the image's sha256.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from pool.storage import Locator, locator_read

# Relative to Image; prefix with "image__" from a Caption query.
LOCATOR_FIELDS = (
    "sha256",
    "file",
    "uri",
    "shard__uri",
    "offset",
    "length",
    "row_group",
    "row",
    "shard__image_column",
)


def locator_from_values(
    sha256: str,
    file: str,
    uri: str,
    shard_uri: str | None,
    offset: int | None,
    length: int | None,
    row_group: int | None,
    row: int | None,
    image_column: str | None,
    *,
    media_root: Path | None = None,
) -> Locator:
    """A locator from the ``LOCATOR_FIELDS`` values, in that order."""
    if file:
        # A copy under MEDIA_ROOT (imports before indexing in place): Loupe's own content-addressed
        # store, named by its hash when it was written; read as it is, as it always was.
        return Locator(uri=str(Path(media_root or settings.MEDIA_ROOT) / file))
    if offset is not None and shard_uri:
        return Locator(uri=shard_uri, offset=offset, length=length, sha256=sha256 or None)
    if row_group is not None and shard_uri:
        return Locator(
            uri=shard_uri, row_group=row_group, row=row, column=image_column or "jpg", sha256=sha256 or None
        )
    return Locator(uri=uri, sha256=sha256 or None)


def image_locator(image) -> Locator:
    shard = image.shard if image.shard_id else None
    return locator_from_values(
        image.sha256,
        image.file,
        image.uri,
        shard.uri if shard else None,
        image.offset,
        image.length,
        image.row_group,
        image.row,
        shard.image_column if shard else None,
    )


def image_read(image) -> bytes:
    """The image's bytes where they live; ``pool.storage.StorageError`` (``BytesChanged`` among them)
    when they cannot be read or are no longer the indexed ones."""
    return locator_read(image_locator(image))
