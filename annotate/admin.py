"""Admin for campaigns, tasks, assignments and judgments."""

from __future__ import annotations

from django.contrib import admin, messages

from annotate import services
from annotate.models import Assignment, Campaign, Judgment, Task, TaskCaption


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "is_active",
        "captions_per_task",
        "overlap",
        "gold_rate",
        "assignment_minutes",
        "created_at",
    )
    list_filter = ("is_active", "consensus_mode")
    search_fields = ("name",)
    actions = ["build_tasks"]

    @admin.action(description="Build tasks from the pool (new images only)")
    def build_tasks(self, request, queryset):
        for campaign in queryset:
            built = services.campaign_tasks_build(campaign=campaign)
            self.message_user(request, f"{campaign.name}: {built} new tasks.", messages.SUCCESS)


class TaskCaptionInline(admin.TabularInline):
    model = TaskCaption
    extra = 0
    raw_id_fields = ("caption",)


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "campaign",
        "image",
        "priority",
        "status",
        "is_gold",
        "judgment_count",
        "claim_count",
    )
    list_filter = ("campaign", "status", "is_gold")
    list_select_related = ("campaign", "image")
    raw_id_fields = ("image",)
    readonly_fields = ("judgment_count", "claim_count")
    inlines = [TaskCaptionInline]
    show_full_result_count = False  # counting 100k+ tasks on every page is slow


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "task", "user", "status", "created_at", "expires_at", "skip_reason")
    list_filter = ("status", "task__campaign")
    list_select_related = ("task", "user")
    raw_id_fields = ("task", "user")
    search_fields = ("user__username",)
    show_full_result_count = False


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = ("id", "task", "user", "duration_ms", "created_at")
    list_filter = ("task__campaign",)
    list_select_related = ("task", "user")
    raw_id_fields = ("task", "user", "assignment")
    readonly_fields = ("client_key", "created_at")
    search_fields = ("user__username",)
    date_hierarchy = "created_at"
    show_full_result_count = False
