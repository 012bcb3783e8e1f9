"""The simulate_annotators command plays annotators through the real queue and judgment services."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from annotate.models import Judgment, Task
from pool.models import Caption


def test_simulated_annotators_submit_valid_judgments_through_the_queue(campaign):
    out = io.StringIO()
    call_command(
        "simulate_annotators",
        campaign=campaign.name,
        annotators=2,
        judgments=5,
        noise=0.1,
        seed=1,
        no_progress=True,
        stdout=out,
    )
    judgments = list(Judgment.objects.select_related("user", "assignment"))
    assert len(judgments) == 5
    assert {j.user.username for j in judgments} <= {"sim-annotator-1", "sim-annotator-2"}
    assert all(not j.user.has_usable_password() for j in judgments)
    assert all(j.assignment.status == "submitted" for j in judgments)
    assert "5 judgments by 2 simulated annotators" in out.getvalue()


def test_simulated_annotators_stop_when_the_queue_runs_out(campaign):
    out = io.StringIO()
    call_command(
        "simulate_annotators",
        campaign=campaign.name,
        annotators=3,
        judgments=1000,
        no_progress=True,
        stdout=out,
    )
    # 6 tasks with overlap 2: the queue holds 12 judgments in all
    assert Judgment.objects.count() == 12
    assert Task.objects.filter(campaign=campaign, status="complete").count() == 6
    assert "The queue ran out after 12" in out.getvalue()


def test_noise_free_annotators_rank_exactly_by_the_demo_truth_table(campaign, tmp_path):
    roles = ["description", "title", "keywords", "negative"]  # best first, as in pool/demo.py
    lines = []
    for image in {c.image for c in Caption.objects.select_related("image")}:
        (tmp_path / f"{image.pk}.jpg").write_bytes(image.path.read_bytes())
        for role, caption in zip(roles, image.captions.order_by("-pk"), strict=False):
            lines.append(json.dumps({"image": f"{image.pk}.jpg", "text": caption.text, "role": role}))
    truth = tmp_path / "truth.jsonl"
    truth.write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    call_command(
        "simulate_annotators",
        campaign=campaign.name,
        annotators=2,
        judgments=12,
        noise=0.0,
        seed=0,
        truth=str(truth),
        no_progress=True,
        stdout=out,
    )
    assert "demo truth table" in out.getvalue()
    assert "100.0% of untied caption pairs" in out.getvalue()
    for judgment in Judgment.objects.all():
        order = [cid for tier in judgment.ranking for cid in tier]
        assert order == sorted(order, reverse=True)  # newest caption = "description" = best


def test_unknown_campaign_is_a_clear_error(db):
    with pytest.raises(CommandError, match="No campaign named 'nope'"):
        call_command("simulate_annotators", campaign="nope", no_progress=True)
