"""The REST API (django-ninja), served at /api/ with its OpenAPI schema at /api/openapi.json and
interactive docs at /api/docs. Routers live in ``loupe_api``; docs/api.md has curl examples."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, ValidationError
from django.http import HttpRequest
from ninja import NinjaAPI, Schema

from accounts.roles import user_role
from loupe_api import annotate, judge, pool, runs
from loupe_api.auth import API_AUTH

api = NinjaAPI(
    title="Loupe API",
    version="1",
    urls_namespace="api",
    auth=API_AUTH,
    description="Token (`Authorization: Bearer <token>`, from /accounts/tokens/) or browser session with CSRF. "
    "Roles as on the pages: annotator < curator < admin. Lists take limit (at most 500) and offset.",
)
api.add_router("/", pool.router)
api.add_router("/", annotate.router)
api.add_router("/", runs.router)
api.add_router("/", judge.router)


@api.exception_handler(ValidationError)
def django_validation_error(request: HttpRequest, exc: ValidationError):
    return api.create_response(request, {"detail": " ".join(exc.messages)}, status=400)


@api.exception_handler(RequestDataTooBig)
def request_too_big(request: HttpRequest, exc: RequestDataTooBig):
    # Without this, ninja answers any unexpected exception with a 500 carrying the traceback when
    # DEBUG is on (and Django a bare 400 when it is off): the client sent too much, which is a 413.
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return api.create_response(
        request,
        {"detail": f"Request body too large: the limit is {limit} bytes (LOUPE_MAX_BODY_BYTES)."},
        status=413,
    )


@api.exception_handler(PermissionDenied)
def permission_denied(request: HttpRequest, exc: PermissionDenied):
    return api.create_response(request, {"detail": str(exc) or "Not allowed."}, status=403)


class MeOut(Schema):
    username: str
    role: str | None


@api.get("/me", response=MeOut, tags=["account"], summary="Who the token or session belongs to")
def me(request: HttpRequest):
    return {"username": request.auth.get_username(), "role": user_role(request.auth)}
