"""Scoring runs (trigger, watch, cancel) and exports (list, download): admins only."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.http import FileResponse, HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import Field

from accounts.roles import ADMIN
from curate.models import Export
from loupe_api.auth import require_role
from loupe_api.common import FilterText, Id, JsonInt, Page, PageQuery, paginate
from scoring.models import ScoringRun
from scoring.services import scoring_run_cancel, scoring_run_start

router = Router()


class ScoringRunOut(Schema):
    id: int
    encoder: str
    reward_model_version: int
    status: str
    done: int
    total: int
    percent: int
    chunks_total: int
    chunks_done: int
    failed_pairs: int
    summary: dict
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ScoringRunIn(Schema):
    encoder: FilterText | None = Field(None, description="Encoder name; the server's default when empty.")
    reward_model_version: JsonInt | None = Field(
        None, ge=0, le=2**31 - 1, description="0 = CLIPScore only; empty = the active reward model."
    )
    chunk_size: JsonInt = Field(2048, ge=16, le=65536)


@router.post("/scoring-runs", response={202: ScoringRunOut}, tags=["runs"], summary="Start scoring the pool")
def scoring_run_create(request: HttpRequest, data: ScoringRunIn):
    require_role(request, ADMIN)
    try:
        run = scoring_run_start(
            encoder=data.encoder or None,
            reward_model_version=data.reward_model_version,
            chunk_size=data.chunk_size,
            user=request.auth,
        )
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    return Status(202, run)


@router.get("/scoring-runs", response=Page[ScoringRunOut], tags=["runs"], summary="List scoring runs")
def scoring_run_list(request: HttpRequest, query: Query[PageQuery]):
    require_role(request, ADMIN)
    return paginate(ScoringRun.objects.order_by("-id"), query)


@router.get(
    "/scoring-runs/{run_id}", response=ScoringRunOut, tags=["runs"], summary="One scoring run (poll it)"
)
def scoring_run_detail(request: HttpRequest, run_id: Id):
    require_role(request, ADMIN)
    return get_object_or_404(ScoringRun, pk=run_id)


@router.post(
    "/scoring-runs/{run_id}/cancel", response=ScoringRunOut, tags=["runs"], summary="Cancel a scoring run"
)
def scoring_run_cancel_request(request: HttpRequest, run_id: Id):
    require_role(request, ADMIN)
    run = get_object_or_404(ScoringRun, pk=run_id)
    scoring_run_cancel(run=run)
    run.refresh_from_db()
    return run


class ExportOut(Schema):
    id: int
    kind: str
    status: str
    done: int
    total: int
    manifest: dict
    files: list[str]
    download_url: str
    created_at: datetime
    finished_at: datetime | None

    @staticmethod
    def resolve_files(obj: Export) -> list[str]:
        try:
            return export_files(obj)
        except HttpError:
            return []

    @staticmethod
    def resolve_download_url(obj: Export) -> str:
        return f"/api/exports/{obj.pk}/download"


def export_root(export: Export) -> Path:
    """The export's real path, refused unless it lies inside settings.EXPORT_DIR (symlinks resolved)."""
    base = Path(settings.EXPORT_DIR).resolve()
    if not export.path:
        raise HttpError(404, f"Export {export.pk} has no file yet (status {export.status}).")
    path = Path(export.path)
    resolved = (path if path.is_absolute() else base / path).resolve()
    if not resolved.is_relative_to(base):
        raise HttpError(403, f"Export {export.pk} points outside the export folder; refusing to serve it.")
    if not resolved.exists():
        raise HttpError(404, f"Export {export.pk}'s file is missing on the server.")
    return resolved


def export_files(export: Export) -> list[str]:
    root = export_root(export)
    if root.is_file():
        return [root.name]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@router.get("/exports", response=Page[ExportOut], tags=["exports"], summary="List exports")
def export_list(request: HttpRequest, query: Query[PageQuery]):
    require_role(request, ADMIN)
    return paginate(Export.objects.order_by("-id"), query)


@router.get("/exports/{export_id}", response=ExportOut, tags=["exports"], summary="One export with its files")
def export_detail(request: HttpRequest, export_id: Id):
    require_role(request, ADMIN)
    return get_object_or_404(Export, pk=export_id)


class DownloadQuery(Schema):
    file: FilterText | None = Field(
        None, description="For a folder export (shards): which file, as listed in files."
    )


@router.get("/exports/{export_id}/download", tags=["exports"], summary="Download an export file")
def export_download(request: HttpRequest, export_id: Id, query: Query[DownloadQuery]):
    require_role(request, ADMIN)
    export = get_object_or_404(Export, pk=export_id)
    root = export_root(export)
    if root.is_file():
        target = root
    else:
        if not query.file:
            raise HttpError(400, f"Export {export.pk} is a folder; pass ?file= with one of its files.")
        target = (root / query.file).resolve()
        if not target.is_relative_to(root) or target.is_symlink():
            raise HttpError(403, f"{query.file!r} is outside export {export.pk}.")
        if not target.is_file():
            raise HttpError(404, f"Export {export.pk} has no file {query.file!r}.")
    return FileResponse(target.open("rb"), as_attachment=True, filename=target.name)
