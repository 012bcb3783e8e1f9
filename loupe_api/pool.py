"""The pool (curators read images, captions, scores and flags) and imports (admins)."""

from __future__ import annotations

import lzma
import shutil
import uuid
import zipfile
import zlib
from datetime import datetime
from pathlib import Path
from typing import Literal

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import File, Form, Query, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile
from pydantic import Field

from accounts.roles import ADMIN, CURATOR
from curate.models import Flag
from loupe_api.auth import require_role
from loupe_api.common import FilterText, Id, LongFilterText, Page, PageQuery, paginate
from pool.models import Caption, Image, ImportRun, Shard
from pool.readers import ImportSourceError, source_check_allowed
from pool.selectors import captions_by_identity, meta_filter_parse
from pool.tasks import import_run_execute
from scoring.models import Score

router = Router(tags=["pool"])


class CaptionOut(Schema):
    id: int
    image_id: int
    uid: str = Field(description="The pair's identity: the source's uid, or derived (uid_source).")
    uid_source: str = Field(description="source, or derived when the source gave none.")
    key: str = Field(description="The source's key of the sample.")
    url: str = Field(description="The URL the source fetched the image from.")
    meta: dict = Field(description="Every other column the source had (original size, its sha256, ...).")
    text: str
    source: str
    status: str
    decision: str
    parent_id: int | None

    @staticmethod
    def resolve_uid(obj: Caption) -> str:
        return obj.pair_uid

    @staticmethod
    def resolve_uid_source(obj: Caption) -> str:
        return "derived" if (obj.uid_derived or not obj.uid) else "source"


class ImageOut(Schema):
    id: int
    sha256: str
    width: int
    height: int
    format: str
    status: str
    status_reason: str
    source: str
    source_key: str
    shard: str | None = Field(description="The shard the image lives in (URI), when it was indexed in place.")
    location: dict = Field(
        description="Where its bytes are: offset/length in the shard, a Parquet cell, or a file."
    )
    url: str = Field(description="Where to load the picture from (behind the same login).")
    thumb_url: str
    created_at: datetime

    @staticmethod
    def resolve_shard(obj: Image) -> str | None:
        return obj.shard.uri if obj.shard_id else None

    @staticmethod
    def resolve_location(obj: Image) -> dict:
        if obj.offset is not None:
            return {"offset": obj.offset, "length": obj.length}
        if obj.row_group is not None:
            return {"row_group": obj.row_group, "row": obj.row}
        if obj.uri:
            return {"file": obj.uri}
        return {"media_file": obj.file} if obj.file else {}


class ImageDetail(ImageOut):
    captions: list[CaptionOut]

    @staticmethod
    def resolve_captions(obj: Image) -> list[Caption]:
        return list(obj.captions.order_by("id"))


class IdentityQuery(PageQuery):
    uid: FilterText | None = Field(None, description="The pair's uid (32 hex digits).")
    key: FilterText | None = Field(None, description="The source's key of the sample.")
    url: LongFilterText | None = Field(None, description="The image's source URL, exactly.")
    meta: FilterText | None = Field(
        None, description="One metadata column's value, as name=value (e.g. original_width=640)."
    )

    def identity(self) -> dict:
        meta = meta_filter_parse(self.meta) if self.meta else None
        if self.meta and meta is None:
            raise HttpError(400, "meta must be name=value, e.g. original_width=640.")
        return {"uid": self.uid or "", "key": self.key or "", "url": self.url or "", "meta": meta}


class ImageQuery(IdentityQuery):
    status: FilterText | None = None
    source: FilterText | None = None
    shard: FilterText | None = Field(None, description="The URI of the shard the images live in.")


class CaptionQuery(IdentityQuery):
    image_id: Id | None = None
    status: FilterText | None = None
    source: FilterText | None = None
    decision: FilterText | None = Field(None, description="accept, reject, rewrite, or 'none' for undecided.")
    q: FilterText | None = Field(None, description="Text the caption contains (case-insensitive).")


@router.get("/images", response=Page[ImageOut], summary="List pool images")
def image_list(request: HttpRequest, query: Query[ImageQuery]):
    require_role(request, CURATOR)
    images = Image.objects.select_related("shard").order_by("id")
    if query.status:
        images = images.filter(status=query.status)
    if query.source:
        images = images.filter(source=query.source)
    if query.shard:
        images = images.filter(shard__uri=query.shard)
    identity = query.identity()
    if any(identity.values()):
        matching = captions_by_identity(Caption.objects.filter(image=OuterRef("pk")), **identity)
        images = images.filter(Exists(matching))
    return paginate(images, query)


@router.get("/images/{image_id}", response=ImageDetail, summary="One image with its captions")
def image_detail(request: HttpRequest, image_id: Id):
    require_role(request, CURATOR)
    return get_object_or_404(Image.objects.select_related("shard"), pk=image_id)


class ShardOut(Schema):
    id: int
    uri: str
    format: str
    metadata_uri: str
    status: str = Field(description="indexing, indexed, changed (since indexed), missing, failed.")
    status_reason: str
    samples: int
    fingerprint: dict
    indexed_at: datetime | None
    checked_at: datetime | None


class ShardQuery(PageQuery):
    status: FilterText | None = None


@router.get("/shards", response=Page[ShardOut], summary="List the shards the pool is indexed from")
def shard_list(request: HttpRequest, query: Query[ShardQuery]):
    require_role(request, CURATOR)
    shards = Shard.objects.order_by("id")
    if query.status:
        shards = shards.filter(status=query.status)
    return paginate(shards, query)


@router.get("/captions", response=Page[CaptionOut], summary="List captions (image-text pairs)")
def caption_list(request: HttpRequest, query: Query[CaptionQuery]):
    require_role(request, CURATOR)
    captions = captions_by_identity(
        Caption.objects.select_related("image").order_by("id"), **query.identity()
    )
    if query.image_id:
        captions = captions.filter(image_id=query.image_id)
    if query.status:
        captions = captions.filter(status=query.status)
    if query.source:
        captions = captions.filter(source=query.source)
    if query.decision:
        captions = captions.filter(decision="" if query.decision == "none" else query.decision)
    if query.q:
        captions = captions.filter(text__icontains=query.q)
    return paginate(captions, query)


class ScoreOut(Schema):
    id: int
    caption_id: int
    image_id: int
    text: str
    encoder: str
    encoder_fingerprint: str
    reward_model_version: int
    cosine: float | None
    clipscore: float | None
    reward: float | None
    criteria: dict | None
    uncertainty: float | None
    truncated: bool
    error: str
    updated_at: datetime

    @staticmethod
    def resolve_image_id(obj: Score) -> int:
        return obj.caption.image_id

    @staticmethod
    def resolve_text(obj: Score) -> str:
        return obj.caption.text


SCORE_ORDERS = {
    "id": "id",
    "reward": "reward",
    "-reward": "-reward",
    "clipscore": "clipscore",
    "-clipscore": "-clipscore",
    "uncertainty": "uncertainty",
    "-uncertainty": "-uncertainty",
}


class ScoreQuery(PageQuery):
    encoder: FilterText | None = None
    encoder_fingerprint: FilterText | None = None
    reward_model_version: int | None = Field(None, ge=0, le=2**31 - 1)
    caption_id: Id | None = None
    min_reward: float | None = Field(None, allow_inf_nan=False)
    max_reward: float | None = Field(None, allow_inf_nan=False)
    min_clipscore: float | None = Field(None, allow_inf_nan=False)
    max_clipscore: float | None = Field(None, allow_inf_nan=False)
    order: str = Field("id", description="One of " + ", ".join(SCORE_ORDERS) + ".")


@router.get("/scores", response=Page[ScoreOut], tags=["scoring"], summary="List scores")
def score_list(request: HttpRequest, query: Query[ScoreQuery]):
    require_role(request, CURATOR)
    if query.order not in SCORE_ORDERS:
        raise HttpError(400, f"order must be one of {', '.join(SCORE_ORDERS)}, not {query.order!r}.")
    scores = Score.objects.select_related("caption")
    for field, value in (
        ("encoder", query.encoder),
        ("encoder_fingerprint", query.encoder_fingerprint),
        ("reward_model_version", query.reward_model_version),
        ("caption_id", query.caption_id),
        ("reward__gte", query.min_reward),
        ("reward__lte", query.max_reward),
        ("clipscore__gte", query.min_clipscore),
        ("clipscore__lte", query.max_clipscore),
    ):
        if value is not None:
            scores = scores.filter(**{field: value})
    order = SCORE_ORDERS[query.order]
    # Nulls last so "best first" lists start with scored pairs; id breaks ties for stable pages.
    key = order.lstrip("-")
    expression = F(key).desc(nulls_last=True) if order.startswith("-") else F(key).asc(nulls_last=True)
    return paginate(scores.order_by(expression, "id"), query)


class FlagOut(Schema):
    id: int
    caption_id: int
    reason: str
    details: dict
    is_open: bool
    created_at: datetime


class FlagQuery(PageQuery):
    reason: FilterText | None = None
    is_open: bool | None = None


@router.get("/flags", response=Page[FlagOut], tags=["scoring"], summary="List curator flags")
def flag_list(request: HttpRequest, query: Query[FlagQuery]):
    require_role(request, CURATOR)
    flags = Flag.objects.order_by("id")
    if query.reason:
        flags = flags.filter(reason=query.reason)
    if query.is_open is not None:
        flags = flags.filter(is_open=query.is_open)
    return paginate(flags, query)


# --- imports (admin) ------------------------------------------------------------------------------


class ImportRunOut(Schema):
    id: int
    source: str
    format: str
    status: str
    outcome: str = Field(
        description="succeeded, finished_with_problems (see problems), failed, or the status while it runs."
    )
    problems: list[str]
    done: int
    total: int
    percent: int
    summary: dict
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


ImportFormat = Literal["webdataset", "parquet", "files", "folder", "csv", "jsonl"]


class ImportIn(Schema):
    source: FilterText = Field(
        description="A folder or file on the server, absolute or relative to the first import root; it must "
        "lie inside one of settings.LOUPE_IMPORT_ROOTS."
    )
    format: ImportFormat | None = Field(
        None, description="webdataset, parquet, files (img2dataset), folder, csv, jsonl; guessed if empty."
    )
    image_column: FilterText | None = None
    caption_columns: list[FilterText] | None = Field(None, max_length=50)


def import_roots() -> list[Path]:
    """The local import roots (object-store roots are URI prefixes, checked by the pool's readers)."""
    if not settings.LOUPE_IMPORT_ROOTS:
        raise HttpError(
            403, "Imports through the API are disabled: the server sets no LOUPE_IMPORT_ROOTS to read from."
        )
    roots = [Path(root).resolve() for root in settings.LOUPE_IMPORT_ROOTS if "://" not in root]
    if not roots:
        raise HttpError(
            403, "The server's LOUPE_IMPORT_ROOTS are all object-store prefixes: give an s3:// URI."
        )
    return roots


def import_source_resolve(source: str) -> Path | str:
    """The real path of ``source``, refused unless it lies inside an import root (symlinks resolved);
    an object-store URI (``s3://...``) is accepted below an object-store root."""
    if "://" in source and not source.startswith("file://"):
        if not settings.LOUPE_IMPORT_ROOTS:
            import_roots()  # refuses with the message for a server without roots
        try:
            source_check_allowed(source)
        except ImportSourceError as exc:
            raise HttpError(403, str(exc)) from None
        return source
    roots = import_roots()
    candidate = Path(source)
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise HttpError(400, f"{source!r} does not exist on the server.") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise HttpError(400, f"{source!r} cannot be read: {exc}.") from None
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        raise HttpError(403, f"{source!r} is outside the import roots ({allowed}).")
    return resolved


def _import_start(
    *, source: Path | str, data: ImportIn | None, user, fmt: str | None = None, root: Path | None = None
):
    """Queues an import run; the worker's task (pool.tasks.import_run_execute) reads its parameters back
    from the row. ``root`` confines the image paths a table may name (an upload's own folder)."""
    params = {
        "format": (data.format if data else fmt) or None,
        "image_column": data.image_column if data else None,
        "caption_columns": data.caption_columns if data else None,
        "caption_source": "alt",
        "root": str(root) if root else None,
    }
    run = ImportRun.objects.create(
        source=str(source), format=params["format"] or "", params=params, created_by=user
    )
    transaction.on_commit(lambda: import_run_execute.delay(run.pk))
    return run


@router.post(
    "/imports", response={202: ImportRunOut}, tags=["imports"], summary="Import pairs from a server path"
)
def import_create(request: HttpRequest, data: ImportIn):
    require_role(request, ADMIN)
    source = import_source_resolve(data.source)
    return Status(202, _import_start(source=source, data=data, user=request.auth))


UPLOAD_SUFFIXES = {".zip", ".jsonl", ".csv", ".parquet"}


def upload_unpack(*, upload: UploadedFile, folder: Path) -> Path:
    """Saves an upload in ``folder`` and returns what to import; a ZIP is unpacked there, refusing members
    that escape the folder and archives that unpack to more than the configured bytes or files (zip bombs)."""
    name = Path(upload.name or "upload").name
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise HttpError(400, f"{name!r}: upload a .zip, .jsonl, .csv or .parquet file.")
    folder.mkdir(parents=True)
    target = folder / f"upload{suffix}"
    with target.open("wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    if suffix != ".zip":
        return target
    unpacked = folder / "files"
    try:
        with zipfile.ZipFile(target) as archive:
            members = archive.infolist()
            if len(members) > settings.LOUPE_UPLOAD_MAX_FILES:
                raise HttpError(
                    400,
                    f"{name!r} holds {len(members)} files, the limit is {settings.LOUPE_UPLOAD_MAX_FILES}.",
                )
            total = sum(member.file_size for member in members)
            if total > settings.LOUPE_UPLOAD_MAX_UNPACKED_BYTES:
                raise HttpError(
                    400,
                    f"{name!r} unpacks to {total} bytes, the limit is {settings.LOUPE_UPLOAD_MAX_UNPACKED_BYTES}.",
                )
            root = unpacked.resolve()
            for member in members:
                destination = (unpacked / member.filename).resolve()
                if (
                    not destination.is_relative_to(root)
                    or (member.external_attr >> 16) & 0o170000 == 0o120000
                ):
                    raise HttpError(400, f"{name!r}: member {member.filename!r} points outside the archive.")
                _zip_member_check(name, member)
            archive.extractall(unpacked)
    except zipfile.BadZipFile as exc:
        raise HttpError(400, f"{name!r} is not a readable ZIP file: {exc}.") from None
    except (RuntimeError, NotImplementedError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        # What the members' checks cannot see before reading the bytes: damaged compressed data, a
        # truncated member, a method this Python cannot unpack.
        raise HttpError(
            400, f"{name!r} cannot be unpacked ({type(exc).__name__}: {exc}); re-create it with plain ZIP."
        ) from None
    target.unlink()
    # A ZIP holding one table at its top (pairs.jsonl beside the images) imports that table; otherwise
    # the unpacked folder is imported as a folder of images with caption files.
    tables = [p for p in unpacked.iterdir() if p.is_file() and p.suffix.lower() in UPLOAD_SUFFIXES - {".zip"}]
    return tables[0] if len(tables) == 1 else unpacked


# Methods Python's zipfile unpacks; anything else (zstd = 93, PPMd = 98, ...) raises while extracting.
ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
ZIP_METHOD_NAMES = {9: "deflate64", 12: "bzip2", 93: "zstd", 95: "xz", 98: "PPMd", 99: "AES (WinZip)"}


def _zip_member_check(name: str, member: zipfile.ZipInfo) -> None:
    """Refuse, before anything is written, members zipfile would fail on halfway through extraction."""
    if member.flag_bits & 0x1 or member.compress_type == 99:
        raise HttpError(
            400,
            f"{name!r}: member {member.filename!r} is encrypted. Upload an archive without a password.",
        )
    if member.compress_type not in ZIP_METHODS:
        method = ZIP_METHOD_NAMES.get(member.compress_type, f"method {member.compress_type}")
        raise HttpError(
            400,
            f"{name!r}: member {member.filename!r} is compressed with {method}, which cannot be unpacked "
            f"here. Re-create the archive with deflate (the default of zip tools) or no compression.",
        )


@router.post(
    "/imports/upload",
    response={202: ImportRunOut},
    tags=["imports"],
    summary="Import pairs from an uploaded file",
)
def import_upload(request: HttpRequest, file: File[UploadedFile], format: Form[ImportFormat | None] = None):
    require_role(request, ADMIN)
    # Inside the first import root, so the pool's own root check accepts it; the upload's folder is the
    # root its table may point into.
    folder = import_roots()[0] / "uploads" / uuid.uuid4().hex
    try:
        source = upload_unpack(upload=file, folder=folder)
    except BaseException:
        # Whatever went wrong (a refused archive, a full disk), nothing of the upload stays behind.
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Status(202, _import_start(source=source, data=None, user=request.auth, fmt=format, root=folder))


@router.get("/imports", response=Page[ImportRunOut], tags=["imports"], summary="List import runs")
def import_list(request: HttpRequest, query: Query[PageQuery]):
    require_role(request, ADMIN)
    return paginate(ImportRun.objects.order_by("-id"), query)


@router.get("/imports/{run_id}", response=ImportRunOut, tags=["imports"], summary="One import run (poll it)")
def import_detail(request: HttpRequest, run_id: Id):
    require_role(request, ADMIN)
    return get_object_or_404(ImportRun, pk=run_id)
