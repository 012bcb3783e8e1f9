"""The demo seed: real offline material through the users' own import path, users per role, a campaign."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from annotate.models import Campaign, Task
from pool.demo import OPENCLIPART_ROOT
from pool.models import Caption, Image
from scoring.models import ScoringRun


@pytest.mark.django_db(transaction=True)
def test_demo_seeds_pool_users_and_campaign_once(settings):
    out = StringIO()
    call_command("demo", clipart=12, stdout=out)

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
    assert Task.objects.filter(campaign=campaign).count() > 0
    assert Task.objects.filter(campaign=campaign, is_gold=True).exists()
    assert ScoringRun.objects.count() == 1
    assert "loupe-annotator" in out.getvalue()

    images, captions = Image.objects.count(), Caption.objects.count()
    again = StringIO()
    call_command("demo", clipart=12, stdout=again)
    assert "already seeded" in again.getvalue()
    assert (Image.objects.count(), Caption.objects.count(), ScoringRun.objects.count()) == (
        images,
        captions,
        1,
    )
