"""Roles: annotator < curator < admin. Each role is a Django group (created by a migration);
a higher role can do everything a lower one can. Superusers are admins."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

ANNOTATOR = "annotator"
CURATOR = "curator"
ADMIN = "admin"
ROLES = (ANNOTATOR, CURATOR, ADMIN)
_RANK = {role: rank for rank, role in enumerate(ROLES)}


def user_role(user) -> str | None:
    """The highest role a user holds, or None."""
    if not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return ADMIN
    names = set(getattr(user, "_loupe_groups", None) or user.groups.values_list("name", flat=True))
    user._loupe_groups = names
    held = [role for role in ROLES if role in names]
    return max(held, key=_RANK.__getitem__) if held else None


def has_role(user, role: str) -> bool:
    held = user_role(user)
    return held is not None and _RANK[held] >= _RANK[role]


def role_required(role: str):
    """View decorator: anonymous users go to the login page, users without the role get 403."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, role):
                raise PermissionDenied(f"This page needs the {role} role.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def roles_context(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"user_role": None}
    return {
        "user_role": user_role(user),
        "is_annotator": has_role(user, ANNOTATOR),
        "is_curator": has_role(user, CURATOR),
        "is_admin": has_role(user, ADMIN),
    }
