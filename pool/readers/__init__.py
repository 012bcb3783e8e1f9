"""Streaming readers for pool imports, one module per format family behind one protocol
(``base.Reader``): ``webdataset`` (``.tar`` shards with img2dataset's Parquet beside them), ``table``
(Parquet, CSV, JSONL), ``folder`` (images with caption sidecars, and img2dataset's ``files`` output).
A source resolves into shards (``Unit``); ``READERS`` maps each format to its reader.
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
    ShardUnreadable,
    Skip,
    Unit,
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
    "webdataset": webdataset,
    "parquet": table,
    "csv": table,
    "jsonl": table,
    "files": folder,
    "folder": folder,
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
    "ShardUnreadable",
    "Skip",
    "Unit",
    "read_options",
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
    return sum(READERS[src.format].estimate(unit) for unit in src.units)


def read_options(*, image_column=None, caption_columns=None, caption_source: str = "alt") -> ReadOptions:
    return ReadOptions(
        image_column=image_column,
        caption_columns=caption_columns_parse(caption_columns, default_source=caption_source),
        caption_source=caption_source,
    )


def records_read(
    src: ImportSource,
    *,
    image_column: str | None = None,
    caption_columns=None,
    caption_source: str = "alt",
) -> Iterator[Record | Skip]:
    """Every shard's records in turn (for callers that do not need per-shard bookkeeping)."""
    path_cache_clear()
    options = read_options(
        image_column=image_column, caption_columns=caption_columns, caption_source=caption_source
    )
    reader = READERS[src.format]
    for unit in src.units:
        try:
            yield from reader.read(unit, src, options)
        except ShardUnreadable as exc:
            yield Skip(unit.name, None, "unreadable_shard", str(exc))
