"""Streaming readers for pool imports, one module per format family behind one protocol
(``base.Reader``): ``folder`` (images with caption sidecars), ``table`` (CSV / JSONL / Parquet) and
``webdataset`` (``.tar`` shards as img2dataset writes them). ``records_read`` dispatches on the format.
"""

from __future__ import annotations

from collections.abc import Iterator

from pool.readers import folder, table, webdataset
from pool.readers.base import (
    CAPTION_SOURCES,
    FORMATS,
    CaptionIn,
    ImportSourceError,
    Reader,
    ReadOptions,
    Record,
    Skip,
    caption_columns_parse,
    caption_prepare,
)
from pool.readers.sources import (
    ImportSource,
    import_roots,
    path_cache_clear,
    path_resolve,
    path_within,
    source_check_allowed,
    source_resolve,
)

READERS: dict[str, Reader] = {
    "folder": folder,
    "csv": table,
    "jsonl": table,
    "parquet": table,
    "webdataset": webdataset,
}

__all__ = [
    "CAPTION_SOURCES",
    "FORMATS",
    "READERS",
    "CaptionIn",
    "ImportSource",
    "ImportSourceError",
    "ReadOptions",
    "Reader",
    "Record",
    "Skip",
    "caption_columns_parse",
    "caption_prepare",
    "import_roots",
    "path_resolve",
    "path_within",
    "records_estimate",
    "records_read",
    "source_check_allowed",
    "source_resolve",
]


def records_estimate(src: ImportSource) -> int:
    """How many records the source holds, cheaply (headers only); 0 when unknown."""
    return READERS[src.format].estimate(src)


def records_read(
    src: ImportSource,
    *,
    image_column: str | None = None,
    caption_columns=None,
    caption_source: str = "alt",
) -> Iterator[Record | Skip]:
    path_cache_clear()
    options = ReadOptions(
        image_column=image_column,
        caption_columns=caption_columns_parse(caption_columns, default_source=caption_source),
        caption_source=caption_source,
    )
    return READERS[src.format].read(src, options)
