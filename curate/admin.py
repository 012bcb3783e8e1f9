"""Admin: a read-mostly view of flags and the review audit trail."""

from __future__ import annotations

from django.contrib import admin

from curate.models import Flag, Review


@admin.register(Flag)
class FlagAdmin(admin.ModelAdmin):
    """Flags are raised by the curation jobs and closed by reviews; the admin only looks."""

    list_display = ("id", "caption", "reason", "is_open", "created_at", "updated_at")
    list_filter = ("reason", "is_open")
    raw_id_fields = ("caption",)
    show_full_result_count = False


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ("id", "caption", "decision", "reviewer", "created_at")
    list_filter = ("decision",)
    raw_id_fields = ("caption", "rewritten_caption", "reviewer")
    search_fields = ("reviewer__username", "note")
    date_hierarchy = "created_at"
    show_full_result_count = False
