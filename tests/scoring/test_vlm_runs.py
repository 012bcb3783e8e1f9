"""Judge runs: MLM-Filter's four metrics for a band of the pool, through the same chunked, idempotent
runs as scoring, and the filter rules that use them."""

from __future__ import annotations

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError

from curate.filtering import FilterRule, filter_plan
from scoring.inference import scoring_chunk_score, scoring_run_sync
from scoring.models import Score, ScoringRun, VlmScore
from scoring.services import scoring_run_start
from scoring.vlm_runs import vlm_band_resolve, vlm_run_start
from tests.scoring.conftest import make_pool
from tests.scoring.tiny_vlm import build_tiny_vlm

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def judge(tmp_path_factory) -> str:
    return f"vlm:{build_tiny_vlm(tmp_path_factory.mktemp('tiny-judge'), 'llava')}"


@pytest.fixture
def scored_pool(tiny_clip_name):
    captions = make_pool(10, 2)
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, reward_model_version=0, enqueue=False))
    return captions


def _middle_band(encoder: str) -> dict:
    return vlm_band_resolve(
        encoder=encoder, reward_model_version=0, field="clipscore", low_percent=25, high_percent=75
    )


def test_judge_run_scores_exactly_the_band_once(scored_pool, tiny_clip_name, judge):
    band = _middle_band(tiny_clip_name)
    in_band = set(
        Score.objects.filter(
            encoder=tiny_clip_name, clipscore__gte=band["low"], clipscore__lte=band["high"]
        ).values_list("caption_id", flat=True)
    )
    assert 0 < len(in_band) < len(scored_pool)
    run = scoring_run_sync(run=vlm_run_start(scorer=judge, band=band, chunk_size=4, enqueue=False))
    assert run.status == "succeeded", run.error
    rows = VlmScore.objects.filter(scorer=judge)
    assert set(rows.values_list("caption_id", flat=True)) == in_band
    assert run.done == len(in_band) == rows.count()
    for row in rows:
        assert row.error == ""
        assert all(0 <= value <= 100 for value in (row.itm, row.odf, row.ctq, row.su))


def test_a_chunk_delivered_twice_changes_nothing(scored_pool, tiny_clip_name, judge):
    run = scoring_run_sync(
        run=vlm_run_start(scorer=judge, band=_middle_band(tiny_clip_name), chunk_size=4, enqueue=False)
    )
    before = list(VlmScore.objects.order_by("caption_id").values_list("caption_id", "itm", "updated_at"))
    assert scoring_chunk_score(run_id=run.pk, chunk_index=0) == "run succeeded"
    ScoringRun.objects.filter(pk=run.pk).update(status="running")
    assert scoring_chunk_score(run_id=run.pk, chunk_index=0) == "already done"
    assert (
        list(VlmScore.objects.order_by("caption_id").values_list("caption_id", "itm", "updated_at")) == before
    )


def test_a_judge_run_needs_a_band_or_captions(judge):
    with pytest.raises(ValueError, match="band of a scoring or a list of captions"):
        vlm_run_start(scorer=judge, enqueue=False)


def test_a_reward_band_without_a_reward_model_says_what_to_do(scored_pool, tiny_clip_name):
    with pytest.raises(ValueError, match="needs a reward model"):
        vlm_band_resolve(
            encoder=tiny_clip_name, reward_model_version=0, field="reward", low_percent=40, high_percent=60
        )


def test_mlm_filter_preset_keeps_the_pairs_above_its_thresholds(scored_pool, tiny_clip_name, judge):
    scoring_run_sync(run=vlm_run_start(scorer=judge, caption_ids=[c.id for c in scored_pool], enqueue=False))
    rule = FilterRule.from_dict({"preset": "mlm-filter"})
    assert (rule.vlm_min, rule.vlm_scorer) == ({"itm": 66.0, "odf": 20.0}, judge)
    # A tiny random judge's scores sit near the middle: a lower bar than the paper's keeps some.
    itm_bar = sorted(VlmScore.objects.values_list("itm", flat=True))[10]
    rule = FilterRule.from_dict({"top_percent": None, "vlm_min": {"itm": itm_bar}})
    plan = filter_plan(encoder=tiny_clip_name, reward_model_version=0, rule=rule)
    expected = set(VlmScore.objects.filter(itm__gte=itm_bar).values_list("caption_id", flat=True))
    assert set(plan.kept.values_list("id", flat=True)) == expected
    assert 0 < len(expected) < len(scored_pool)


def test_unjudged_pairs_are_dropped_unless_the_rule_keeps_them(scored_pool, tiny_clip_name, judge):
    judged = [c.id for c in scored_pool[:6]]
    scoring_run_sync(run=vlm_run_start(scorer=judge, caption_ids=judged, enqueue=False))
    drop = FilterRule.from_dict({"top_percent": None, "vlm_min": {"itm": 0}})
    keep = FilterRule.from_dict({"top_percent": None, "vlm_min": {"itm": 0}, "vlm_unjudged": "keep"})
    kept_drop = set(
        filter_plan(encoder=tiny_clip_name, reward_model_version=0, rule=drop).kept.values_list(
            "id", flat=True
        )
    )
    kept_keep = set(
        filter_plan(encoder=tiny_clip_name, reward_model_version=0, rule=keep).kept.values_list(
            "id", flat=True
        )
    )
    assert kept_drop == set(judged)
    assert kept_keep == {c.id for c in scored_pool}


def test_a_rule_on_a_judge_that_never_scored_says_what_to_run():
    with pytest.raises(ValueError, match="score_pool --scorer vlm"):
        FilterRule.from_dict({"preset": "mlm-filter"})


def test_score_pool_command_runs_a_judge_over_a_band(scored_pool, tiny_clip_name, judge, capsys):
    call_command("score_pool", scorer=judge, encoder=tiny_clip_name, band="clipscore:0-100", sync=True)
    assert VlmScore.objects.count() == len(scored_pool)
    assert "Judge run" in capsys.readouterr().out


def test_score_pool_refuses_a_judge_over_the_whole_pool(judge):
    with pytest.raises(CommandError, match="--band"):
        call_command("score_pool", scorer=judge)


def test_low_judge_flags_name_the_judge_and_the_reward_view(scored_pool, tiny_clip_name, judge):
    from curate.flags import flags_refresh
    from curate.models import Flag, FlagReason

    scoring_run_sync(run=vlm_run_start(scorer=judge, caption_ids=[c.id for c in scored_pool], enqueue=False))
    counts = flags_refresh(encoder=tiny_clip_name, reward_model_version=0, judge_itm_below=100)
    flags = Flag.objects.filter(reason=FlagReason.LOW_JUDGE, is_open=True)
    assert counts["low_judge"]["open"] == flags.count() == len(scored_pool)
    assert all(f.details["judge"] == judge and 0 <= f.details["itm"] < 100 for f in flags)
    # A stricter bar closes them (never deletes).
    flags_refresh(encoder=tiny_clip_name, reward_model_version=0, judge_itm_below=0)
    assert not Flag.objects.filter(reason=FlagReason.LOW_JUDGE, is_open=True).exists()
    assert Flag.objects.filter(reason=FlagReason.LOW_JUDGE).count() == len(scored_pool)


def test_api_lists_judge_scores_worst_first_and_starts_a_band_run(scored_pool, tiny_clip_name, judge, client):
    from tests.conftest import make_user

    scoring_run_sync(run=vlm_run_start(scorer=judge, caption_ids=[c.id for c in scored_pool], enqueue=False))
    client.force_login(make_user("api-admin", "admin"))
    page = client.get("/api/judge-scores", {"limit": 5}).json()
    itms = [row["itm"] for row in page["items"]]
    assert len(itms) == 5 and itms == sorted(itms)
    assert all(row["uid"] and row["scorer"] == judge for row in page["items"])
    response = client.post(
        "/api/judge-runs",
        {
            "scorer": judge,
            "encoder": tiny_clip_name,
            "field": "clipscore",
            "low_percent": 40,
            "high_percent": 60,
        },
        content_type="application/json",
    )
    assert response.status_code == 202, response.content
    assert response.json()["params"]["band"]["field"] == "clipscore"


def test_an_mlm_filter_export_carries_the_judge_metrics_and_its_identity(
    scored_pool, tiny_clip_name, judge, tmp_path
):
    import pyarrow.parquet as pq

    from curate.exports import export_create, export_execute
    from curate.filtering import filter_run_create, filter_run_execute

    scoring_run_sync(run=vlm_run_start(scorer=judge, caption_ids=[c.id for c in scored_pool], enqueue=False))
    bar = sorted(VlmScore.objects.values_list("itm", flat=True))[5]
    rule = FilterRule.from_dict({"top_percent": None, "vlm_min": {"itm": bar}})
    run = filter_run_execute(
        run=filter_run_create(encoder=tiny_clip_name, reward_model_version=0, rule=rule, confirm=True)
    )
    export = export_execute(export=export_create(kind="parquet", filter_run=run, out=tmp_path / "pq"))
    rows = pq.read_table(tmp_path / "pq" / "pairs.parquet").to_pylist()
    assert len(rows) == run.kept > 0 and all(row["judge_itm"] >= bar for row in rows)
    judge_block = export.manifest["models"]["judge"]
    assert judge_block["identity"] == rule.vlm_fingerprint and judge_block["thresholds"] == {"itm": bar}
