"""The judge page: curators see what the judge thinks; admins start judge and rewrite runs from forms."""

from __future__ import annotations

import pytest

from curate.models import RewriteRun
from scoring.models import ScoringRun
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def judge_dir(tmp_path):
    (tmp_path / "judge").mkdir()
    return f"vlm:{tmp_path / 'judge'}"


def _client(client, role):
    client.force_login(make_user(f"u-{role}", role))
    return client


def test_curators_see_the_page_without_forms(client):
    response = _client(client, "curator").get("/curate/judge/")
    assert response.status_code == 200
    assert b"No judge has scored any pair yet" in response.content
    assert b"Start judge run" not in response.content


def test_admin_starts_a_rewrite_run_from_the_form(client, judge_dir):
    response = _client(client, "admin").post(
        "/curate/judge/rewrites", {"scorer": judge_dir, "itm_below": "45", "limit": "20"}
    )
    assert response.status_code == 302
    run = RewriteRun.objects.get()
    assert (run.scorer, run.params) == (judge_dir, {"below": {"itm": 45.0}, "limit": 20})


def test_a_judge_band_without_scores_says_to_score_first(client, judge_dir):
    response = _client(client, "admin").post(
        "/curate/judge/runs",
        {
            "scorer": judge_dir,
            "encoder": "offline:effnet-minilm",
            "field": "clipscore",
            "low_percent": "40",
            "high_percent": "60",
        },
    )
    assert response.status_code == 400
    assert b"run score_pool first" in response.content
    assert not ScoringRun.objects.exists()


def test_a_judge_name_that_is_not_a_directory_is_refused(client, tmp_path):
    response = _client(client, "admin").post(
        "/curate/judge/rewrites", {"scorer": f"vlm:{tmp_path}/missing/dir", "itm_below": "45", "limit": "20"}
    )
    assert response.status_code == 400 and b"not a directory" in response.content
