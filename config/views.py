"""Project-level glue views: the role-aware landing page, media behind login, a health check."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from django.views.static import serve

from accounts.roles import user_role


@require_GET
@login_required
def home(request):
    return render(request, "home.html", {"role": user_role(request.user)})


@require_GET
@login_required
def media(request, path: str):
    # django.views.static.serve refuses paths that escape the root.
    return serve(request, path, document_root=settings.MEDIA_ROOT)


@require_GET
def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})
