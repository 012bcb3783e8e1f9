"""Views of the pool app: thin, they call services (importing, cleaning_runs) and selectors. Curators browse; admins start runs."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.roles import ADMIN, CURATOR, has_role, role_required
from pool import cleaning_runs, importing, selectors
from pool.forms import CleaningForm, ImportForm
from pool.images import FORMAT_EXTENSIONS, ImageRejected
from pool.locate import image_read
from pool.models import CaptionStatus, CleaningRun, Image, ImageStatus, ImportRun, ShardStatus
from pool.run_views import run_progress_response
from pool.storage import StorageError
from pool.thumbnails import thumbnail_make

# An image's bytes never change under its URL (reads are checked against its sha256): browsers may
# keep them. Private: they are behind a login.
IMAGE_CACHE = "private, max-age=604800, immutable"
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


@require_GET
@role_required(CURATOR)
def pool_browse(request):
    status = request.GET.get("status", "")
    if status not in ImageStatus.values:
        status = ""
    source = request.GET.get("source", "")
    q = request.GET.get("q", "").strip()[:200]
    identity = {name: request.GET.get(name, "").strip()[:2048] for name in ("uid", "key", "url")}
    meta_text = request.GET.get("meta", "").strip()[:500]
    shard = _int_or_none(request.GET.get("shard"))
    page = selectors.images_page(
        status=status,
        source=source,
        q=q,
        meta=selectors.meta_filter_parse(meta_text),
        shard=shard,
        after=_int_or_none(request.GET.get("after")),
        before=_int_or_none(request.GET.get("before")),
        **identity,
    )
    stats = selectors.pool_stats()
    context = {
        "page": page,
        "stats": stats,
        "chart_labels": [label for label, _, _ in stats["images"]],
        "chart_values": [count for _, count, _ in stats["images"]],
        "statuses": ImageStatus.choices,
        "sources": selectors.image_sources(),
        "filters": {
            "status": status,
            "source": source,
            "q": q,
            "meta": meta_text,
            "shard": shard or "",
            **identity,
        },
        "view": request.GET.get("view", "grid") if request.GET.get("view") in ("grid", "table") else "grid",
    }
    template = "pool/browse.html#results" if request.htmx else "pool/browse.html"
    return render(request, template, context)


@require_GET
@login_required
def image_file(request, image_id: int):
    """The image's bytes, read where they live. Behind a login only, like MEDIA_ROOT: annotators see the
    images of their tasks through this view."""
    image = get_object_or_404(Image.objects.select_related("shard"), pk=image_id)
    try:
        data = image_read(image)
    except StorageError as exc:
        return HttpResponse(f"Image {image.pk} cannot be read: {exc}", status=404, content_type="text/plain")
    response = HttpResponse(data, content_type=CONTENT_TYPES.get(image.format, "application/octet-stream"))
    ext = FORMAT_EXTENSIONS.get(image.format, "bin")
    response["Content-Disposition"] = f'inline; filename="{image.sha256[:16]}.{ext}"'
    response["Cache-Control"] = IMAGE_CACHE
    response["ETag"] = f'"{image.sha256}"'
    return response


@require_GET
@login_required
def image_thumb(request, image_id: int):
    """A small JPEG of the image, made once and kept under MEDIA_ROOT/thumbs."""
    image = get_object_or_404(Image.objects.select_related("shard"), pk=image_id)
    try:
        path = thumbnail_make(image)
    except (StorageError, ImageRejected) as exc:
        return HttpResponse(f"Image {image.pk} cannot be shown: {exc}", status=404, content_type="text/plain")
    response = FileResponse(open(path, "rb"), content_type="image/jpeg")  # noqa: SIM115 - FileResponse closes it
    response["Cache-Control"] = IMAGE_CACHE
    return response


@require_GET
@role_required(CURATOR)
def shard_list(request):
    status = request.GET.get("status", "")
    if status not in ShardStatus.values:
        status = ""
    shards, next_after = selectors.shards_page(status=status, after=_int_or_none(request.GET.get("after")))
    counts = selectors.shard_counts()
    return render(
        request,
        "pool/shards.html",
        {
            "shards": shards,
            "next_after": next_after,
            "statuses": [(v, label, counts[v]) for v, label in ShardStatus.choices],
            "status": status,
        },
    )


@require_GET
@role_required(CURATOR)
def image_detail(request, image_id: int):
    try:
        image = selectors.image_detail(image_id=image_id)
    except Image.DoesNotExist:
        raise Http404("No such image") from None
    return render(
        request,
        "pool/image_detail.html",
        {
            "image": image,
            "duplicates": selectors.image_duplicates(image=image),
            "caption_statuses": CaptionStatus,
        },
    )


def _runs_page(request, *, template: str, runs, form_class, form=None, status: int = 200):
    """A list of runs with, for admins, the form that starts one (bound and with errors after a bad POST)."""
    if form is None and has_role(request.user, ADMIN):
        form = form_class()
    return render(request, template, {"runs": runs, "form": form}, status=status)


def _run_detail(request, *, model, run_id: int, template: str, progress_url: str):
    run = get_object_or_404(model, pk=run_id)
    return render(request, template, {"run": run, "poll_url": reverse(progress_url, args=[run.pk])})


def _run_start(request, *, form_class, template: str, runs, start, detail_url: str):
    """Start a run from a POSTed form; a bad form comes back with its errors (400)."""
    form = form_class(request.POST)
    if not form.is_valid():
        return _runs_page(request, template=template, runs=runs, form_class=form_class, form=form, status=400)
    run, message = start(form.cleaned_data)
    messages.success(request, message)
    return redirect(detail_url, run_id=run.pk)


@require_GET
@role_required(CURATOR)
def import_list(request):
    return _runs_page(
        request, template="pool/imports.html", runs=selectors.import_runs(), form_class=ImportForm
    )


@require_POST
@role_required(ADMIN)
def import_start(request):
    def start(data):
        run = importing.import_run_start(
            source=data["source"],
            user=request.user,
            format=data["format"] or None,
            image_column=data["image_column"] or None,
            caption_columns=data["caption_columns"] or None,
            caption_source=data["caption_source"],
        )
        return run, f"Import {run.pk} of {run.source} queued."

    return _run_start(
        request,
        form_class=ImportForm,
        template="pool/imports.html",
        runs=selectors.import_runs(),
        start=start,
        detail_url="pool:import_detail",
    )


@require_GET
@role_required(CURATOR)
def import_detail(request, run_id: int):
    return _run_detail(
        request,
        model=ImportRun,
        run_id=run_id,
        template="pool/import_detail.html",
        progress_url="pool:import_progress",
    )


@require_GET
@role_required(CURATOR)
def import_progress(request, run_id: int):
    return run_progress_response(request, get_object_or_404(ImportRun, pk=run_id))


@require_GET
@role_required(CURATOR)
def cleaning_list(request):
    return _runs_page(
        request, template="pool/cleaning.html", runs=selectors.cleaning_runs(), form_class=CleaningForm
    )


@require_POST
@role_required(ADMIN)
def cleaning_start(request):
    def start(data):
        run = cleaning_runs.cleaning_run_start(
            user=request.user, min_side=data["min_side"], hamming_radius=data["radius"]
        )
        return run, f"Cleaning run {run.pk} queued."

    return _run_start(
        request,
        form_class=CleaningForm,
        template="pool/cleaning.html",
        runs=selectors.cleaning_runs(),
        start=start,
        detail_url="pool:cleaning_detail",
    )


@require_GET
@role_required(CURATOR)
def cleaning_detail(request, run_id: int):
    return _run_detail(
        request,
        model=CleaningRun,
        run_id=run_id,
        template="pool/cleaning_detail.html",
        progress_url="pool:cleaning_progress",
    )


@require_GET
@role_required(CURATOR)
def cleaning_progress(request, run_id: int):
    return run_progress_response(request, get_object_or_404(CleaningRun, pk=run_id))
