"""The REST API (django-ninja), served at /api/ with its OpenAPI schema at /api/openapi.json."""

from __future__ import annotations

from ninja import NinjaAPI

api = NinjaAPI(title="Loupe API", version="1", urls_namespace="api")
