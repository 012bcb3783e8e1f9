"""The REST API (django-ninja), served at /api/ with its OpenAPI schema at /api/openapi.json and
interactive docs at /api/docs. Routers live in ``loupe_api``; docs/api.md has curl examples."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest
from ninja import NinjaAPI, Schema

from accounts.roles import user_role
from loupe_api import annotate, pool, runs
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


@api.exception_handler(ValidationError)
def django_validation_error(request: HttpRequest, exc: ValidationError):
    return api.create_response(request, {"detail": " ".join(exc.messages)}, status=400)


@api.exception_handler(PermissionDenied)
def permission_denied(request: HttpRequest, exc: PermissionDenied):
    return api.create_response(request, {"detail": str(exc) or "Not allowed."}, status=403)


class MeOut(Schema):
    username: str
    role: str | None


@api.get("/me", response=MeOut, tags=["account"], summary="Who the token or session belongs to")
def me(request: HttpRequest):
    return {"username": request.auth.get_username(), "role": user_role(request.auth)}
