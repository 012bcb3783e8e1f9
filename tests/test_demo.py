"""The demo seed: real offline material through the users' own import path, users per role, a campaign,
and every later stage run once through the real services, so every screen has content on first visit."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from annotate.models import Campaign, Judgment, Task
from curate.models import Export, FilterRun, Flag
from loop.models import LoopRun
from pool.demo import OPENCLIPART_ROOT
from pool.models import Caption, Image
from scoring.models import Score, ScoringRun
from tests.scoring.tiny_clip import tiny_clip_encoder_name
from training.models import RewardModel


@pytest.mark.django_db(transaction=True)
def test_demo_seeds_every_stage_once(settings, tmp_path):
    # A tiny random-weight encoder keeps the test quick; the gate then refuses the model (it cannot beat
    # CLIPScore by chance alone), which is the path the demo must explain without stopping.
    settings.LOUPE_DEFAULT_ENCODER = tiny_clip_encoder_name(tmp_path / "tiny-clip")
    out = StringIO()
    call_command("demo", clipart=12, stdout=out)
    log = out.getvalue()

    for username, password in [
        ("admin", "loupe-admin"),
        ("curator", "loupe-curator"),
        ("annotator", "loupe-annotator"),
    ]:
        assert authenticate(username=username, password=password) is not None, username
    photos = Image.objects.filter(source__endswith="manifest.jsonl").count()
    assert photos >= 12  # the packaged photos at least; clip art too when openclipart-svg is installed
    if OPENCLIPART_ROOT.is_dir():
        assert Caption.objects.filter(text__startswith="clip art of ").exists()
    campaign = Campaign.objects.get()
    assert Task.objects.filter(campaign=campaign, is_gold=True).exists()
    # Simulated annotators, labelled as such; tasks are left for the people.
    assert Judgment.objects.filter(user__username__startswith="sim-annotator-").count() >= 30
    assert not Judgment.objects.exclude(user__username__startswith="sim-annotator-").exists()
    assert Task.objects.filter(campaign=campaign, status="open").exists()
    assert ScoringRun.objects.filter(status="succeeded").exists() and Score.objects.exists()
    # One loop pass: a model on the Models page (promoted or refused, and the log says which).
    loop_run = LoopRun.objects.get()
    assert loop_run.status == "succeeded", loop_run.log
    assert RewardModel.objects.count() == 1
    assert "promoted" in log or "The gate refused the first reward model" in log
    assert Flag.objects.exists()
    filter_run = FilterRun.objects.get()
    assert filter_run.status == "succeeded" and filter_run.kept > 0
    assert Export.objects.get().status == "succeeded"
    # A readable log: progress as a line per 10%, no bar redraws.
    assert "\r" not in log
    assert "Demo seeded in" in log and "loupe-annotator" in log

    counts = (
        Image.objects.count(),
        Caption.objects.count(),
        ScoringRun.objects.count(),
        Judgment.objects.count(),
    )
    again = StringIO()
    call_command("demo", clipart=12, stdout=again)
    assert "already seeded" in again.getvalue()
    assert (
        Image.objects.count(),
        Caption.objects.count(),
        ScoringRun.objects.count(),
        Judgment.objects.count(),
    ) == counts
