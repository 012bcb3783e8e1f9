"""Exports of judgments: COCO-HF-style JSON and preference pairs JSONL, and the management command."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.core.management import CommandError, call_command

from annotate import services
from annotate.exports import judgments_coco_hf, pairs_from_ranking, preference_pairs_jsonl
from pool.models import Caption
from tests.annotate.factories import answer_for, campaign_with_tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def judged(annotators):
    """One task of four captions judged by two annotators, the first with a tie of the top two."""
    campaign = campaign_with_tasks(name="Export me", images=2, overlap=2)
    users = annotators(2)
    task = None
    for index, user in enumerate(users):
        assignment = services.task_next(campaign=campaign, user=user)
        task = assignment.task
        ranking, ratings = answer_for(task, tie_first_two=index == 0, rating=index + 2)
        services.judgment_submit(
            user=user, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    return campaign, task


def test_pairs_from_ranking_with_a_tie():
    """5 > 3 = 9 > 1: six pairs, one of them (3, 9) a tie."""
    assert sorted(pairs_from_ranking([[5], [3, 9], [1]])) == sorted(
        [(5, 3, False), (5, 9, False), (5, 1, False), (3, 9, True), (3, 1, False), (9, 1, False)]
    )


def test_coco_hf_export_holds_image_captions_and_each_annotators_answer(judged):
    campaign, task = judged
    stream = io.StringIO()
    assert judgments_coco_hf(campaign=campaign, stream=stream) == 1
    document = json.loads(stream.getvalue())
    assert document["info"]["campaign"] == "Export me"
    (record,) = document["annotations"]
    assert record["task_id"] == task.pk and record["image"]["sha256"] == task.image.sha256
    assert [c["id"] for c in record["captions"]] == services.task_caption_ids(task)
    assert [j["annotator"] for j in record["judgments"]] == ["ann0", "ann1"]
    ids = services.task_caption_ids(task)
    assert record["judgments"][0]["ranking"][0] == ids[:2]
    assert record["judgments"][1]["ratings"][str(ids[0])]["accuracy"] == 3
    # Consensus of (a = b > c > d) and (a > b > c > d): mean ranks 1.25, 1.75, 3, 4 -> a > b > c > d.
    assert record["consensus"]["ranking"] == [[ids[0]], [ids[1]], [ids[2]], [ids[3]]]
    assert record["consensus"]["mean_ratings"][str(ids[0])]["accuracy"] == 2.5


def test_pairs_export_weights_each_judgment_to_one_and_marks_ties(judged):
    campaign, task = judged
    stream = io.StringIO()
    assert preference_pairs_jsonl(campaign=campaign, stream=stream) == 12  # 2 judgments x C(4, 2)
    rows = [json.loads(line) for line in stream.getvalue().splitlines()]
    for judgment_id in {r["judgment_id"] for r in rows}:
        assert sum(r["weight"] for r in rows if r["judgment_id"] == judgment_id) == pytest.approx(1.0)
    ties = [r for r in rows if r["tie"]]
    ids = services.task_caption_ids(task)
    assert len(ties) == 1 and {ties[0]["chosen_id"], ties[0]["rejected_id"]} == set(ids[:2])
    strict = next(r for r in rows if r["annotator"] == "ann1" and r["chosen_id"] == ids[0])
    assert strict["rejected_id"] in ids[1:]
    assert strict["chosen_text"] == Caption.objects.get(pk=ids[0]).text


def test_export_command_writes_and_refuses_to_overwrite(judged, tmp_path):
    campaign, _ = judged
    out = tmp_path / "pairs.jsonl"
    call_command("export_judgments", "--campaign", campaign.name, "--format", "pairs", "--out", str(out))
    assert len(out.read_text().splitlines()) == 12
    with pytest.raises(CommandError, match="already exists"):
        call_command("export_judgments", "--campaign", campaign.name, "--format", "pairs", "--out", str(out))
    call_command(
        "export_judgments",
        "--campaign",
        campaign.name,
        "--format",
        "coco_hf",
        "--out",
        str(out),
        "--overwrite",
    )
    assert json.loads(out.read_text())["info"]["campaign"] == campaign.name


def test_export_command_names_the_campaigns_when_one_is_unknown(judged, tmp_path):
    with pytest.raises(CommandError, match="Export me"):
        call_command(
            "export_judgments", "--campaign", "nope", "--format", "pairs", "--out", str(tmp_path / "x")
        )
