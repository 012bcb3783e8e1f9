"""A judge run through a real Celery worker: fills the four metrics for the band, and a worker killed
mid-run loses at most its chunk (resume completes it, every pair judged exactly once)."""

from __future__ import annotations

import pytest
from django.db.models import Count

from pool.models import RunStatus
from scoring.models import ScoringRun, VlmScore
from scoring.tasks import scoring_run_resume
from scoring.vlm_runs import vlm_run_start
from tests.conftest import wait_for
from tests.scoring.tiny_vlm import build_tiny_vlm
from tests.system.test_worker_scoring import _pool, _worker_env

pytestmark = [pytest.mark.system, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def judge(tmp_path_factory) -> str:
    return f"vlm:{build_tiny_vlm(tmp_path_factory.mktemp('tiny-judge'), 'llava')}"


def _run(run_id: int) -> ScoringRun:
    return ScoringRun.objects.get(pk=run_id)


def test_killed_judge_worker_then_resume_judges_every_pair_once(judge, celery_worker_process):
    caption_ids = _pool(12, captions_per_image=2)
    env = {**_worker_env(), "OMP_NUM_THREADS": "1"}
    first = celery_worker_process(extra_env=env)
    run = vlm_run_start(scorer=judge, caption_ids=sorted(caption_ids), chunk_size=2)  # 12 chunks
    wait_for(
        lambda: _run(run.pk).chunks_done >= 2,
        timeout=300,
        interval=0.05,
        message=f"first judged chunks; worker log:\n{first.log()[-3000:]}",
    )
    first.kill()
    assert _run(run.pk).chunks_done < _run(run.pk).chunks_total
    second = celery_worker_process(extra_env=env)
    scoring_run_resume.delay(run.pk)
    done = wait_for(
        lambda: _run(run.pk).is_finished and _run(run.pk),
        timeout=400,
        message=f"judge run to finish; worker log:\n{second.log()[-3000:]}",
    )
    assert done.status == RunStatus.SUCCEEDED, done.error
    rows = VlmScore.objects.filter(scorer=judge)
    assert set(rows.values_list("caption_id", flat=True)) == caption_ids
    assert not rows.values("caption_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    assert rows.filter(error="", itm__isnull=False).count() == len(caption_ids)
