from __future__ import annotations

import pytest
from django.urls import reverse

from curate.exports import export_create, export_execute
from curate.filtering import FilterRule, filter_run_create, filter_run_execute
from curate.models import Export, FilterRun
from tests.curate.conftest import ENCODER, VERSION, make_scored_pool

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def pool(settings):
    settings.LOUPE_DEFAULT_ENCODER = ENCODER
    return make_scored_pool(20, images=10)


def _run():
    return filter_run_execute(
        run=filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=30))
    )


def test_the_page_shows_a_preview_with_histogram_and_cut(client, curator):
    client.force_login(curator)
    page = client.get(reverse("filters:index")).content.decode()
    assert 'id="preview-kept">6<' in page and 'class="cut"' in page and "accuracy" in page


def test_the_htmx_preview_follows_the_form(client, curator):
    client.force_login(curator)
    response = client.get(reverse("filters:preview"), {"top_percent": "50"}, headers={"HX-Request": "true"})
    body = response.content.decode()
    assert 'id="preview-kept">10<' in body and "<html" not in body
    preset = client.get(
        reverse("filters:preview"), {"preset": "datacomp-0.28"}, headers={"HX-Request": "true"}
    )
    assert "cosine ≥ 0.28" in preset.content.decode()


def test_a_rule_that_keeps_everything_asks_for_confirmation_before_running(
    client, curator, eager_celery, django_capture_on_commit_callbacks
):
    client.force_login(curator)
    response = client.post(reverse("filters:run_create"), {"top_percent": "100"})
    assert response.status_code == 400 and "keeps everything" in response.content.decode()
    assert not FilterRun.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("filters:run_create"), {"top_percent": "100", "confirm": "yes"})
    assert response.status_code == 302
    run = FilterRun.objects.get()
    assert run.status == "succeeded" and run.kept == run.considered == 20


def test_running_a_filter_from_the_form(client, curator, eager_celery, django_capture_on_commit_callbacks):
    client.force_login(curator)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("filters:run_create"), {"top_percent": "30", "min_accuracy": "2"})
    run = FilterRun.objects.get()
    assert run.rule["criteria_min"] == {"accuracy": 2.0} and run.kept == 6
    page = client.get(reverse("filters:index")).content.decode()
    assert "top 30% by reward AND accuracy ≥ 2" in page and "3.33×" in page


def test_curators_export_what_a_run_keeps_and_download_it(
    client, curator, annotator, eager_celery, django_capture_on_commit_callbacks
):
    run = _run()
    client.force_login(annotator)
    assert client.post(reverse("filters:export_start", args=[run.pk]), {"kind": "parquet"}).status_code == 403
    client.force_login(curator)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("filters:export_start", args=[run.pk]), {"kind": "parquet"})
    export = Export.objects.get()
    assert export.status == "succeeded" and export.done == export.total == 6
    response = client.get(reverse("filters:export_download", args=[export.pk, "pairs.parquet"]))
    assert response.status_code == 200 and response["Content-Disposition"].startswith("attachment")
    assert b"".join(response.streaming_content)[:4] == b"PAR1"
    assert client.get(reverse("filters:export_download", args=[export.pk, ".."])).status_code == 404


def test_a_download_outside_the_export_folder_is_refused(client, admin_user, tmp_path):
    export = export_execute(export=export_create(kind="jsonl", filter_run=_run(), out=tmp_path / "elsewhere"))
    client.force_login(admin_user)
    response = client.get(reverse("filters:export_download", args=[export.pk, "pairs.jsonl"]))
    assert response.status_code == 404


def test_a_judgment_export_picks_its_campaign_by_name(client, curator):
    from tests.annotate.factories import campaign_with_tasks

    campaign = campaign_with_tasks(name="Only campaign", images=1)
    _run()
    client.force_login(curator)
    page = client.get(reverse("filters:index")).content.decode()
    # One campaign: preselected by name, no typed id.
    assert f'<option value="{campaign.pk}">Only campaign</option>' in page
    assert 'placeholder="campaign id"' not in page
    response = client.post(
        reverse("filters:export_start", args=[FilterRun.objects.get().pk]),
        {"kind": "coco_hf", "campaign": ""},
    )
    assert response.status_code == 302 and not Export.objects.exists()


def test_a_run_lists_its_kept_and_dropped_pairs_by_keyset_without_counting(client, curator, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from curate import filter_views

    monkeypatch.setattr(filter_views, "PAIRS_PER_PAGE", 5)
    run = _run()
    client.force_login(curator)
    url = reverse("filters:run_detail", args=[run.pk])
    seen = {"kept": [], "dropped": []}
    with CaptureQueriesContext(connection) as queries:
        for show in ("kept", "dropped"):
            after = ""
            while True:
                response = client.get(url, {"show": show, "after": after})
                page = response.context["page"]
                seen[show] += [row.caption.id for row in page.rows]
                if page.next_after is None:
                    break
                after = str(page.next_after)
    assert not [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    kept = set(seen["kept"])
    assert len(seen["kept"]) == len(kept) == 6 and len(seen["dropped"]) == 14
    assert not kept & set(seen["dropped"])
    assert seen["kept"] == sorted(seen["kept"])
    html = client.get(url, {"show": "kept"}).content.decode()
    assert "Dropped <span" in html and "Next kept pairs" in html


def test_a_reward_rule_on_clipscore_only_scores_says_what_to_do_instead(client, curator):
    from django.utils.html import escape

    client.force_login(curator)
    clip_only = {"version": "0", "top_percent": "30"}
    preview = client.get(reverse("filters:preview"), clip_only).content.decode()
    assert escape("needs a reward model") in preview and "datacomp-0.28" in preview
    response = client.post(reverse("filters:run_create"), clip_only)
    assert response.status_code == 400 and "needs a reward model" in response.content.decode()
    assert not FilterRun.objects.exists()
