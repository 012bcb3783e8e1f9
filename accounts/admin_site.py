"""The Django admin site, opened by role: users with the admin role use it, whatever their ``is_staff``.

Django's own site asks for ``is_staff`` and per-model permissions, which Loupe's roles do not set, so an
admin-role user was refused it. Here the site follows the role (``has_role(user, ADMIN)``), and
``RolePermissionBackend`` gives admin-role users the model permissions the admin pages check.
"""

from __future__ import annotations

from django.contrib import admin


def _is_admin(user) -> bool:
    from accounts.roles import ADMIN, has_role

    return bool(user and user.is_active and has_role(user, ADMIN))


class LoupeAdminSite(admin.AdminSite):
    site_header = "Loupe administration"
    site_title = "Loupe admin"
    index_title = "Data, users and schedules"

    def has_permission(self, request) -> bool:
        return _is_admin(request.user)


class RolePermissionBackend:
    """Authorisation only (it authenticates nobody): admin-role users hold every model permission."""

    def authenticate(self, request, **credentials):
        return None

    def has_perm(self, user_obj, perm, obj=None) -> bool:
        return _is_admin(user_obj)

    def has_module_perms(self, user_obj, app_label) -> bool:
        return self.has_perm(user_obj, app_label)
