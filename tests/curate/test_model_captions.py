"""Rewrite instead of drop (AITQE) and metadata expansion with a multimodal judge (a tiny random one)."""

from __future__ import annotations

import pytest
import torch
from django.core.management import call_command

from annotate.models import TaskCaption
from curate.model_captions import image_descriptions_add, rewrite_run_execute, rewrite_run_start
from curate.models import RewriteRun
from curate.rewrite import rewrite_suggest
from pool.models import Caption, CaptionSource
from scoring.inference import scoring_run_sync
from scoring.models import VlmScore
from scoring.vlm import vlm_load
from scoring.vlm_runs import vlm_run_start
from tests.annotate.factories import campaign_with_tasks
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
def judged(judge):
    captions = make_pool(4, 1)
    scoring_run_sync(run=vlm_run_start(scorer=judge, caption_ids=[c.id for c in captions], enqueue=False))
    return captions


def test_rewrite_run_writes_judged_model_captions_under_their_originals(judge, judged):
    run = rewrite_run_start(scorer=judge, below={"itm": 100}, limit=10, enqueue=False)
    run = rewrite_run_execute(run=run, score_new=False)
    assert run.status == "succeeded", run.error
    rewrites = Caption.objects.filter(source=CaptionSource.MODEL)
    counts = run.summary["counts"]
    assert rewrites.count() == counts.get("rewritten", 0) and run.total == len(judged)
    assert sum(counts.values()) == len(judged)  # every candidate is rewritten or counted with a reason
    for rewrite in rewrites:
        assert rewrite.parent_id in {c.id for c in judged} and rewrite.image_id == rewrite.parent.image_id
        assert VlmScore.objects.filter(caption=rewrite, scorer=judge).exists()
    originals = set(Caption.objects.filter(id__in=[c.id for c in judged]).values_list("text", flat=True))
    assert originals == {c.text for c in judged}  # the originals are untouched


def test_a_second_rewrite_run_rewrites_nothing_twice(judge, judged):
    rewrite_run_execute(
        run=rewrite_run_start(scorer=judge, below={"itm": 100}, enqueue=False), score_new=False
    )
    first = Caption.objects.filter(source=CaptionSource.MODEL).count()
    again = rewrite_run_execute(
        run=rewrite_run_start(scorer=judge, below={"itm": 100}, enqueue=False), score_new=False
    )
    assert Caption.objects.filter(source=CaptionSource.MODEL).count() == first
    assert again.total == len(judged) - first


def test_rewrites_reach_annotators_next_to_their_original(judge, judged):
    campaign = campaign_with_tasks(name="rewrites", images=0)
    run = rewrite_run_start(scorer=judge, below={"itm": 100}, campaign=campaign, enqueue=False)
    rewrite_run_execute(run=run, score_new=False)
    for rewrite in Caption.objects.filter(source=CaptionSource.MODEL):
        task_ids = TaskCaption.objects.filter(caption=rewrite).values_list("task_id", flat=True)
        assert TaskCaption.objects.filter(task_id__in=task_ids, caption_id=rewrite.parent_id).exists()


def test_a_bar_on_an_unknown_metric_is_refused(judge):
    with pytest.raises(ValueError, match="itm, odf, ctq, su"):
        rewrite_run_start(scorer=judge, below={"clip": 3}, enqueue=False)
    assert not RewriteRun.objects.exists()


def test_suggest_uses_the_judge_when_one_is_configured(judge, judged, settings):
    settings.LOUPE_VLM_JUDGE = judge
    result = rewrite_suggest(caption=judged[0])
    assert result["generator"] in ("judge", "template")
    if result["generator"] == "template":  # the random judge may write nothing usable: then it says so
        assert "judge failed" in result["detail"]


def test_descriptions_add_one_model_candidate_per_image_once(judge):
    captions = make_pool(3, 1)
    ids = [c.image_id for c in captions]
    counts = image_descriptions_add(scorer=vlm_load(judge), image_ids=ids)
    assert counts["described"] + counts["empty"] + counts["duplicate"] == 3
    again = image_descriptions_add(scorer=vlm_load(judge), image_ids=ids)
    assert again["described"] == 0
    assert (
        Caption.objects.filter(source=CaptionSource.MODEL, parent__isnull=True).count() == counts["described"]
    )


def test_rewrite_captions_command_runs_in_process(judge, judged, capsys):
    call_command("rewrite_captions", scorer=judge, below=["itm=100"], sync=True)
    assert "Rewrite run" in capsys.readouterr().out
