"""API authentication (a per-user bearer token, or the browser's session with CSRF) and role checks.

Roles are the web pages' roles (accounts.roles): a token acts as its user, with that user's role.
"""

from __future__ import annotations

from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import HttpBearer, SessionAuth

from accounts.roles import has_role
from accounts.services import api_token_user


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <token>``; tokens are made on /accounts/tokens/ or with create_api_token."""

    def authenticate(self, request: HttpRequest, token: str):
        user = api_token_user(raw=token)
        if user is not None:
            # Views and services read request.user, as they do for the pages.
            request.user = user
        return user


# Session auth checks CSRF on unsafe methods, the same as every form: the browser's cookie is ambient
# authority, a bearer token is not.
API_AUTH = [TokenAuth(), SessionAuth(csrf=True)]


def require_role(request: HttpRequest, role: str) -> None:
    """403 with the role's name when the caller lacks it (the caller is authenticated by then)."""
    if not has_role(request.auth, role):
        raise HttpError(403, f"This needs the {role} role.")
