"""WebDataset ``.tar`` shards as img2dataset writes them: ``key.jpg``, ``key.txt``, ``key.json``, with the
shard's metadata in ``00000.parquet`` beside ``00000.tar`` (uid, key, url, caption, status, sizes, sha256
and any extra columns).

The tar is scanned as a stream of 512-byte headers: each image's data offset and length are recorded
(that is where the pool reads it from later), its bytes pass through once to be hashed, and members
that are not needed (captions the Parquet already gives, embeddings, anything over the size limit) are
skipped by seeking, never read. A member is never larger in memory than the limit, which is checked
from its header before a byte of it is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings

from pool import storage
from pool.readers.base import (
    MAX_SIDECAR_BYTES,
    STATUS_COLUMN,
    CaptionProblem,
    ReadOptions,
    Record,
    ShardUnreadable,
    Skip,
    Unit,
    captions_from_values,
    download_failure,
    identity_apply,
    json_captions,
    json_object,
    record_or_skips,
)
from pool.readers.sources import ImportSource, unit_fingerprint

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"}
BLOCK = 512
ZERO_BLOCK = b"\0" * BLOCK
CAPTION_COLUMN = "caption"


class TarDamaged(Exception):
    """The tar cannot be read past this point (truncated, a bad header)."""


@dataclass
class TarMember:
    name: str
    offset: int  # of its data, from the start of the file
    size: int


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256, for members of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    digits = field.replace(b"\0", b" ").strip()
    return int(digits, 8) if digits else 0


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        if length <= 0:
            break
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class TarScanner:
    """Iterates a tar's regular files as ``TarMember`` (ustar, GNU long names and pax headers); call
    ``read(member)`` during the iteration step to get a member's data, otherwise it is skipped unread."""

    def __init__(self, handle, *, name: str):
        self.handle = handle
        self.name = name
        self.pos = 0  # where the handle is
        self._next = 0  # where the next header starts

    def _read_exact(self, size: int, what: str) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise TarDamaged(f"{self.name} is truncated: {what} at offset {self.pos} is cut short")
        self.pos += size
        return data

    def _seek(self, offset: int) -> None:
        if offset != self.pos:
            self.handle.seek(offset)
            self.pos = offset

    def __iter__(self) -> Iterator[TarMember]:
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            self._seek(self._next)
            header = self.handle.read(BLOCK)
            self.pos += len(header)
            if not header or header == ZERO_BLOCK:
                return  # end of archive (two zero blocks, or a tar that just stops after a member)
            if len(header) < BLOCK:
                raise TarDamaged(f"{self.name} is truncated: a header at offset {self.pos - len(header)}")
            try:
                checksum = _octal(header[148:156])
                size = _octal(header[124:136])
            except ValueError as exc:
                raise TarDamaged(f"{self.name}: not a tar header at offset {self.pos - BLOCK}") from exc
            if checksum != sum(header) - sum(header[148:156]) + 8 * 32:
                raise TarDamaged(f"{self.name}: damaged header (checksum) at offset {self.pos - BLOCK}")
            kind = header[156:157]
            data_offset = self.pos
            self._next = data_offset + (size + BLOCK - 1) // BLOCK * BLOCK
            if kind in (b"x", b"L"):
                if size > MAX_SIDECAR_BYTES:
                    raise TarDamaged(f"{self.name}: an extended header of {size:,} bytes")
                data = self._read_exact(size, "an extended header")
                if kind == b"x":
                    pax = _pax_records(data)
                else:
                    long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            if kind not in (b"0", b"\0", b"7"):
                long_name, pax = None, {}
                continue  # folders, links, global headers: no image is ever read through a link
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:263] == b"ustar\x00":
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if prefix:
                    name = f"{prefix}/{name}"
            name = pax.get("path") or long_name or name
            if "size" in pax:
                size = int(pax["size"])
                self._next = data_offset + (size + BLOCK - 1) // BLOCK * BLOCK
            long_name, pax = None, {}
            yield TarMember(name=name, offset=data_offset, size=size)

    def read(self, member: TarMember) -> bytes:
        self._seek(member.offset)
        return self._read_exact(member.size, f"member {member.name}")


def tar_key(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is everything before the first dot of the basename and the
    rest is the extension (``a/k1.input.jpg`` -> ``a/k1``, ``input.jpg``)."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _kind(ext: str) -> str:
    """``image``, ``txt``, ``json`` or ``other`` from an extension, multi-dot ones included."""
    last = ext.rsplit(".", 1)[-1]
    if last in IMAGE_EXTS:
        return "image"
    if last in ("txt", "json"):
        return last
    return "other"


# --- metadata beside the shard --------------------------------------------------------------------


def _metadata_read(uri: str) -> tuple[dict[str, dict] | None, list[str], str]:
    """img2dataset's Parquet beside a shard as {key: row}, its columns, and a problem ('' when none).

    One shard's rows (a few thousand) are in memory at a time; binary columns are not read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = storage.uri_name(uri)
    try:
        with storage.open_uri(uri, block_size=1 << 22) as handle:
            parquet = pq.ParquetFile(handle)
            schema = parquet.schema_arrow
            columns = [
                f.name
                for f in schema
                if not pa.types.is_binary(f.type) and not pa.types.is_large_binary(f.type)
            ]
            if "key" not in columns:
                return None, columns, f"{name} has no key column, so its rows cannot be matched to the tar"
            table = parquet.read(columns=columns)
    except storage.StorageError as exc:
        return None, [], f"{name}: {exc}"
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        return None, [], f"{name} is not a readable Parquet file ({type(exc).__name__}: {str(exc)[:200]})"
    rows: dict[str, dict] = {}
    for row in table.to_pylist():
        key = row.get("key")
        if key is not None:
            rows[str(key)] = row
    return rows, columns, ""


# --- reader ---------------------------------------------------------------------------------------


def units(src: ImportSource) -> list[Unit]:
    return src.units


def fingerprint(unit: Unit) -> dict:
    return unit_fingerprint(unit)


def estimate(unit: Unit) -> int:
    """The metadata's row count, from its footer (failed downloads included); else unknown."""
    if not unit.metadata_uri:
        return 0
    try:
        import pyarrow.parquet as pq

        with storage.open_uri(unit.metadata_uri, block_size=1 << 20) as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    except Exception:  # noqa: BLE001 - an estimate only; reading reports the problem properly
        return 0


@dataclass
class _Sample:
    key: str
    image: TarMember | None = None
    image_data: bytes | None = None
    txt: bytes | None = None
    json: bytes | None = None
    problems: list[Skip] | None = None
    others: list[str] | None = None  # extensions of the members not read


def read(unit: Unit, src: ImportSource, options: ReadOptions) -> Iterator[Record | Skip]:
    yield from read_shard(unit, caption_source=options.caption_source)


def read_shard(unit: Unit, *, caption_source: str = "alt") -> Iterator[Record | Skip]:
    """One shard: its samples in tar order, then what its metadata lists that the tar does not hold."""
    file = unit.name
    rows: dict[str, dict] | None = None
    columns: list[str] = []
    if unit.metadata_uri:
        rows, columns, problem = _metadata_read(unit.metadata_uri)
        if problem:
            yield Skip(file, None, "bad_metadata", f"{problem}; using the tar's own .json and .txt instead")
    caption_in_rows = rows is not None and CAPTION_COLUMN in columns
    max_bytes = settings.LOUPE_MAX_IMAGE_BYTES
    max_chars = settings.LOUPE_MAX_CAPTION_CHARS  # read once: settings lookups cost per sample
    seen: set[str] = set()
    try:
        handle = storage.open_uri(unit.uri)
    except storage.StorageError as exc:
        raise ShardUnreadable(str(exc)) from exc
    with handle:
        scanner = TarScanner(handle, name=file)
        sample: _Sample | None = None
        try:
            for member in scanner:
                key, ext = tar_key(member.name)
                if sample is None or key != sample.key:
                    if sample is not None:
                        yield from _sample_records(
                            unit, sample, rows, caption_in_rows, caption_source, max_chars
                        )
                        seen.add(sample.key)
                    sample = _Sample(key)
                kind = _kind(ext)
                row = rows.get(key) if rows is not None else None
                if kind == "image" and sample.image is None:
                    sample.image = member
                    if member.size > max_bytes:
                        sample.problems = [
                            Skip(
                                file,
                                key,
                                "image_too_large",
                                f"{member.name} is {member.size:,} bytes, over the limit of {max_bytes:,} "
                                "(refused from its tar header, not read)",
                            )
                        ]
                    else:
                        sample.image_data = scanner.read(member)
                elif kind == "txt" and sample.txt is None and not (row is not None and caption_in_rows):
                    sample.txt = _sidecar(scanner, member, sample, file, key)
                elif kind == "json" and sample.json is None and (rows is None or row is None):
                    sample.json = _sidecar(scanner, member, sample, file, key)
                elif kind == "other":
                    sample.others = (sample.others or []) + [ext]
        except (TarDamaged, storage.StorageError) as exc:
            if sample is None:
                raise ShardUnreadable(f"{file} is not a readable tar ({exc})") from exc
            # What was read before the damage still imports; the sample being read is reported with it.
            yield Skip(file, sample.key, "corrupt_shard", f"{exc}; the rest of the shard is not read")
            sample = None
        if sample is not None:
            yield from _sample_records(unit, sample, rows, caption_in_rows, caption_source, max_chars)
            seen.add(sample.key)
    if rows:
        yield from _metadata_leftovers(unit, rows, seen)


def _sidecar(scanner: TarScanner, member: TarMember, sample: _Sample, file: str, key: str) -> bytes | None:
    if member.size > MAX_SIDECAR_BYTES:
        sample.problems = (sample.problems or []) + [
            Skip(
                file,
                key,
                "sidecar_too_large",
                f"{member.name} is {member.size:,} bytes; a caption file may hold {MAX_SIDECAR_BYTES:,}",
            )
        ]
        return None
    return scanner.read(member)


def _sample_records(
    unit: Unit, sample: _Sample, rows: dict | None, caption_in_rows: bool, caption_source: str, max_chars: int
) -> Iterator[Record | Skip]:
    file, key = unit.name, sample.key
    if sample.problems:
        yield from sample.problems
        if sample.image is None or sample.image_data is None:
            return
    if sample.image is None:
        if "svg" in (sample.others or []):
            yield Skip(file, key, "not_an_image", "SVG is not a raster image")
        else:
            yield Skip(file, key, "missing_image", f"no image member for key {key}")
        return
    record = Record(
        unit=unit.uri,
        key=key,
        file=file,
        row=key,
        data=sample.image_data,
        offset=sample.image.offset,
        length=sample.image.size,
        sample_key=key,
    )
    values: list = []
    problems: list[CaptionProblem] = []
    row = rows.get(key) if rows is not None else None
    try:
        if rows is not None:
            if row is None:
                yield Skip(
                    file,
                    key,
                    "not_in_metadata",
                    f"the tar holds {key} but {storage.uri_name(unit.metadata_uri)} has no row for it "
                    "(the two disagree: was one of them rewritten?)",
                )
                return
            failure = download_failure(row)
            if failure:
                yield Skip(
                    file,
                    key,
                    "metadata_mismatch",
                    f"the tar holds {key} but its metadata row says {failure}",
                )
                return
            identity_apply(record, row, exclude={CAPTION_COLUMN})
            if caption_in_rows:
                values.append(row.get(CAPTION_COLUMN))
        elif sample.json is not None:
            meta = json_object(sample.json, f"{key}.json")
            identity_apply(record, meta)
            if sample.txt is None:
                values += json_captions(meta)
    except CaptionProblem as problem:
        yield Skip(file, key, problem.code, problem.reason)
        return
    if sample.txt is not None:
        values.append(sample.txt)  # the whole file is one caption, line breaks included
    if not values or all(v is None for v in values):
        image_name = sample.image.name.rsplit("/", 1)[-1]
        yield Skip(file, key, "missing_caption", f"{image_name} has no caption ({key}.txt missing)")
        return
    captions, more = captions_from_values([(v, caption_source) for v in values], max_chars=max_chars)
    record.captions = captions
    yield from record_or_skips(record, problems + more, file, key)


def _metadata_leftovers(unit: Unit, rows: dict[str, dict], seen: set[str]) -> Iterator[Skip]:
    """Rows of the metadata the tar has no sample for: img2dataset's failed downloads, with its own
    reason, and successful rows whose image is missing (the two files disagree)."""
    file, meta_name = unit.name, storage.uri_name(unit.metadata_uri)
    for key, row in rows.items():
        if key in seen:
            continue
        failure = download_failure(row)
        if failure:
            yield Skip(file, key, "download_failed", failure)
        else:
            yield Skip(
                file,
                key,
                "missing_in_tar",
                f"{meta_name} says {key} was downloaded (status {row.get(STATUS_COLUMN) or 'unknown'}) "
                "but the tar has no image for it",
            )
