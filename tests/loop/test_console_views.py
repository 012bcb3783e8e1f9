"""The admin console (training/console_views.py): pages, permissions, cancel, retry, start form."""

from __future__ import annotations

import pytest
from django.urls import reverse

from curate.models import FilterRun
from loop.models import LoopRun
from loop.services import loop_start
from pool.models import CleaningRun, ImportRun, RunStatus
from scoring.models import ScoringRun
from training.models import TrainingRun

PAGES = ["console:dashboard", "console:jobs"]


@pytest.mark.parametrize("name", PAGES)
def test_console_pages_render_for_admin(client, admin_user, campaign, name):
    client.force_login(admin_user)
    response = client.get(reverse(name))
    assert response.status_code == 200


@pytest.mark.parametrize("name", PAGES)
@pytest.mark.parametrize("role_fixture", ["curator", "annotator"])
def test_console_pages_are_refused_to_curators_and_annotators(client, db, request, role_fixture, name):
    client.force_login(request.getfixturevalue(role_fixture))
    assert client.get(reverse(name)).status_code == 403


@pytest.mark.parametrize("name", PAGES)
def test_console_pages_send_anonymous_users_to_login(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_post_endpoints_are_refused_to_curators(client, curator, campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    client.force_login(curator)
    assert client.post(reverse("console:job_cancel", args=["loop", run.pk])).status_code == 403
    assert client.post(reverse("console:loop_start"), {"campaign": campaign.pk}).status_code == 403
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED


def test_dashboard_shows_pool_counts_judgments_chart_and_the_form(client, admin_user, campaign, annotator):
    import re
    import uuid

    from django.utils import timezone

    from annotate import services
    from tests.annotate.factories import answer_for

    for _ in range(3):
        task = services.task_next(campaign=campaign, user=annotator).task
        ranking, ratings = answer_for(task)
        services.judgment_submit(
            user=annotator, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    client.force_login(admin_user)
    html = client.get(reverse("console:dashboard")).content.decode()
    stats = dict(
        (label.split(" (")[0], value)
        for value, label in re.findall(
            r'<div class="stat">([^<]*)</div><div class="stat-label">([^<]*)</div>', html
        )
    )
    assert stats["images in the pool"] == "6" and stats["pairs"] == "24"  # 6 images x 4 captions
    assert "3 judgments in all" in html
    # Today's bar of the chart carries today's three judgments (a chart with no data has no bars).
    today = timezone.localtime().strftime("%m-%d")
    assert f"<title>{today}: 3</title>" in html
    assert "Retrain and filter now" in html and campaign.name in html
    assert "No schedule installed" in html


def test_jobs_page_lists_every_run_type_newest_first_with_progress(client, admin_user, campaign):
    imported = ImportRun.objects.create(source="/data/a.csv", format="csv")
    CleaningRun.objects.create()
    ScoringRun.objects.create(encoder="offline:effnet-minilm", total=10, done=4, status=RunStatus.RUNNING)
    FilterRun.objects.create(encoder="offline:effnet-minilm", status=RunStatus.FAILED, error="no scores")
    TrainingRun.objects.create(campaign=campaign, encoder="offline:effnet-minilm")
    loop = loop_start(campaign=campaign, enqueue=False)
    client.force_login(admin_user)
    html = client.get(reverse("console:jobs")).content.decode()
    for label in ("Import", "Cleaning", "Scoring", "Filter", "Training", "Loop"):
        assert f">{label}</span>" in html
    # Newest first: the loop run was created last, the import first.
    assert html.index(f"Loop {loop.pk}") < html.index(f"Import {imported.pk}")
    # The table refreshes as a whole while jobs run: status, bars and buttons stay in step.
    assert 'id="jobs-table" hx-get="/console/jobs/" hx-trigger="every 3s"' in html
    assert "no scores" in html


def test_jobs_filter_by_kind_serves_the_table_partial_to_htmx(client, admin_user, campaign):
    ImportRun.objects.create(source="/data/a.csv", format="csv")
    loop_start(campaign=campaign, enqueue=False)
    client.force_login(admin_user)
    response = client.get(reverse("console:jobs"), {"kind": "loop"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert "<html" not in html and 'id="jobs-table"' in html
    assert ">Loop</span>" in html and ">Import</span>" not in html


def test_progress_partial_polls_while_unfinished_and_stops_when_done(client, admin_user, campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    client.force_login(admin_user)
    url = reverse("console:job_progress", args=["loop", run.pk])
    assert f'hx-get="{url}"' in client.get(url).content.decode()
    LoopRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED, done=7, total=7)
    assert "hx-get" not in client.get(url).content.decode()


def test_job_detail_shows_log_error_and_steps(client, admin_user, campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    LoopRun.objects.filter(pk=run.pk).update(
        step="gate", status=RunStatus.FAILED, error="Step 'rescore' failed: scoring run 3 failed"
    )
    client.force_login(admin_user)
    html = client.get(reverse("console:job_detail", args=["loop", run.pk])).content.decode()
    assert "Step &#x27;rescore&#x27; failed" in html
    assert "step-done" in html and "step-failed" in html
    assert "queued (manual)" in html  # the log
    assert reverse("console:job_retry", args=["loop", run.pk]) in html


def test_unknown_job_kind_is_404(client, admin_user):
    client.force_login(admin_user)
    assert client.get(reverse("console:job_detail", args=["nope", 1])).status_code == 404


def test_cancel_marks_a_loop_run_cancelled(client, admin_user, campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    client.force_login(admin_user)
    response = client.post(reverse("console:job_cancel", args=["loop", run.pk]), follow=True)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert "cancelled" in response.content.decode()


def test_cancel_of_a_finished_run_changes_nothing(client, admin_user):
    run = ImportRun.objects.create(source="x", format="csv", status=RunStatus.SUCCEEDED)
    client.force_login(admin_user)
    response = client.post(reverse("console:job_cancel", args=["import", run.pk]), follow=True)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and "already finished" in response.content.decode()


def test_retry_resumes_a_failed_loop_run(client, admin_user, campaign, django_capture_on_commit_callbacks):
    run = loop_start(campaign=campaign, enqueue=False)
    LoopRun.objects.filter(pk=run.pk).update(step="gate", status=RunStatus.FAILED, error="boom")
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("console:job_retry", args=["loop", run.pk]), follow=True)
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.error == ""
    assert "resumed at step &#x27;rescore&#x27;" in response.content.decode()
    assert len(callbacks) == 1


def test_retry_requeues_a_failed_filter_run(client, admin_user, django_capture_on_commit_callbacks):
    run = FilterRun.objects.create(encoder="offline:effnet-minilm", status=RunStatus.FAILED, error="x")
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post(reverse("console:job_retry", args=["filter", run.pk]))
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.error == "" and len(callbacks) == 1


def test_retry_of_a_running_job_is_refused_with_a_message(client, admin_user, campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    client.force_login(admin_user)
    response = client.post(reverse("console:job_retry", args=["loop", run.pk]), follow=True)
    assert "can be retried only when" in response.content.decode()


def test_start_form_queues_a_chain_with_the_filter_rule(
    client, admin_user, campaign, django_capture_on_commit_callbacks
):
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("console:loop_start"),
            {"campaign": campaign.pk, "encoder": "", "filter_preset": "top_percent", "top_percent": "20"},
        )
    run = LoopRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "console:job_detail", args=["loop", run.pk]
    )
    assert run.params["filter_rule"] == {"top_percent": 20.0}
    assert run.created_by == admin_user and run.trigger == "manual" and len(callbacks) == 1


def test_start_form_is_refused_with_a_message_while_a_chain_runs(client, admin_user, campaign):
    running = loop_start(campaign=campaign, enqueue=False)
    client.force_login(admin_user)
    response = client.post(reverse("console:loop_start"), {"campaign": campaign.pk}, follow=True)
    assert (
        f"Loop run {running.pk}" in response.content.decode()
        and "already queued" in response.content.decode()
    )
    assert LoopRun.objects.count() == 1


def test_start_form_rejects_a_bad_encoder_name(client, admin_user, campaign):
    client.force_login(admin_user)
    response = client.post(
        reverse("console:loop_start"), {"campaign": campaign.pk, "encoder": "open_clip:nope"}
    )
    assert response.status_code == 400 and "expected open_clip" in response.content.decode()
    assert not LoopRun.objects.exists()


def test_the_only_campaign_is_preselected_and_both_thresholds_are_shown(
    client, admin_user, campaign, settings
):
    settings.LOUPE_REWARD_MIN_JUDGMENTS = 31
    settings.LOUPE_RETRAIN_AFTER_JUDGMENTS = 57
    client.force_login(admin_user)
    html = client.get(reverse("console:dashboard")).content.decode()
    assert f'<option value="{campaign.pk}" selected>' in html and "---------" not in html
    assert "<strong>31 judgments</strong>" in html and "<strong>57 new" in html
    assert ">57 judgments<" in html  # the campaign's own threshold follows the setting


def test_the_live_job_fragment_never_contradicts_itself(client, admin_user, campaign):
    run = loop_start(campaign=campaign, enqueue=False)
    LoopRun.objects.filter(pk=run.pk).update(step="gate", done=3, status=RunStatus.QUEUED)
    client.force_login(admin_user)
    url = reverse("console:job_detail", args=["loop", run.pk])
    live = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert "<html" not in live and 'id="job-live"' in live and 'hx-trigger="every 2s"' in live
    # Queued: no step is shown as running; the next one is marked as next, the status says so.
    assert "step-running" not in live and 'step step-next" title="next">rescore' in live
    assert "waiting for a worker; resumes at step <strong>rescore</strong>" in live
    assert f"/console/jobs/loop/{run.pk}/cancel/" in live
    LoopRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED, error="Step 'rescore' failed: boom")
    live = client.get(url, headers={"HX-Request": "true"}).content.decode()
    # Failed: the same fragment drops the Cancel button and stops polling, with the error.
    assert f"/console/jobs/loop/{run.pk}/cancel/" not in live and "hx-trigger" not in live
    assert "step-failed" in live and "boom" in live and "Resume" in live
