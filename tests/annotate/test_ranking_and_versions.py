"""A ranking is an act (derived from the ratings or made by the annotator), and a judgment can be
corrected: a new version, the old one kept, every reader using the latest."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.urls import reverse

from annotate import selectors, services
from annotate.exports import judgments_coco_hf, preference_pairs_jsonl
from annotate.models import Judgment, JudgmentRevision, RankingBasis
from annotate.services import JudgmentError
from tests.annotate.factories import answer_for, campaign_with_tasks
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def _ratings(task, values: list[int]) -> dict:
    """Every criterion of the i-th caption (build order) rated values[i]."""
    ids = services.task_caption_ids(task)
    return {
        str(cid): {k: v for k in task.campaign.criterion_keys} for cid, v in zip(ids, values, strict=True)
    }


def _claim(campaign, user):
    return services.task_next(campaign=campaign, user=user)


# --- the ranking is derived or confirmed, never the display order ---------------------------------


def test_ranking_from_ratings_sorts_by_mean_and_keeps_ties():
    ratings = {"1": {"a": 3, "b": 3}, "2": {"a": 5, "b": 4}, "3": {"a": 4, "b": 2}, "4": {"a": 2, "b": 2}}
    assert services.ranking_from_ratings(ratings, caption_ids=[1, 2, 3, 4]) == [[2], [1, 3], [4]]


def test_submit_with_ranking_basis_ratings_stores_the_ranking_the_ratings_give(annotator):
    campaign = campaign_with_tasks(images=1, overlap=1)
    task = _claim(campaign, annotator).task
    ids = services.task_caption_ids(task)
    judgment = services.judgment_submit(
        user=annotator,
        task=task,
        ranking=[],
        ratings=_ratings(task, [2, 5, 2, 4]),
        client_key=uuid.uuid4(),
        ranking_basis=RankingBasis.RATINGS,
    )
    assert judgment.ranking == [[ids[1]], [ids[3]], sorted([ids[0], ids[2]])]
    assert judgment.ranking_basis == "ratings"


def test_submit_without_a_ranking_basis_is_refused_and_stores_nothing(annotator):
    campaign = campaign_with_tasks(images=1, overlap=1)
    task = _claim(campaign, annotator).task
    ranking, ratings = answer_for(task)
    with pytest.raises(JudgmentError, match="Rank the captions before submitting"):
        services.judgment_submit(
            user=annotator,
            task=task,
            ranking=ranking,
            ratings=ratings,
            client_key=uuid.uuid4(),
            ranking_basis="",
        )
    assert Judgment.objects.count() == 0


def test_a_ranking_that_contradicts_the_ratings_it_claims_to_follow_is_refused(annotator):
    campaign = campaign_with_tasks(images=1, overlap=1)
    task = _claim(campaign, annotator).task
    ids = services.task_caption_ids(task)
    with pytest.raises(JudgmentError, match="no longer follows your ratings"):
        services.judgment_submit(
            user=annotator,
            task=task,
            ranking=[[cid] for cid in ids],  # the build order, not what the ratings say
            ratings=_ratings(task, [1, 5, 3, 2]),
            client_key=uuid.uuid4(),
            ranking_basis=RankingBasis.RATINGS,
        )


def _post(client, campaign, task, *, basis, tiers=None, values=(4, 4, 4, 4)):
    ids = services.task_caption_ids(task)
    data = {"client_key": str(uuid.uuid4()), "duration_ms": "5000"}
    if basis is not None:
        data["ranking_basis"] = basis
    for cid, value in zip(ids, values, strict=True):
        data[f"tier_{cid}"] = str((tiers or {}).get(cid, ""))
        for key in campaign.criterion_keys:
            data[f"rate_{cid}_{key}"] = str(value)
    return client.post(reverse("annotate:submit", args=[campaign.pk, task.pk]), data)


def test_the_display_order_posted_without_a_ranking_act_is_refused_with_a_clear_message(client, annotator):
    campaign = campaign_with_tasks(images=1, overlap=1)
    client.force_login(annotator)
    task = _claim(campaign, annotator).task
    ids = services.task_caption_ids(task)
    response = _post(client, campaign, task, basis=None, tiers={cid: i + 1 for i, cid in enumerate(ids)})
    assert response.status_code == 400
    assert "Rank the captions before submitting" in response.content.decode()
    assert Judgment.objects.count() == 0


def test_plain_form_with_blank_ranks_ranks_by_the_ratings(client, annotator):
    campaign = campaign_with_tasks(images=1, overlap=1)
    client.force_login(annotator)
    task = _claim(campaign, annotator).task
    ids = services.task_caption_ids(task)
    response = _post(client, campaign, task, basis="form", values=(3, 5, 1, 3))
    assert response.status_code == 302
    judgment = Judgment.objects.get()
    assert judgment.ranking == [[ids[1]], sorted([ids[0], ids[3]]), [ids[2]]]
    assert judgment.ranking_basis == "ratings"


def test_plain_form_with_every_rank_entered_is_a_confirmed_ranking(client, annotator):
    campaign = campaign_with_tasks(images=1, overlap=1)
    client.force_login(annotator)
    task = _claim(campaign, annotator).task
    ids = services.task_caption_ids(task)
    tiers = {ids[0]: 4, ids[1]: 3, ids[2]: 2, ids[3]: 1}
    assert _post(client, campaign, task, basis="form", tiers=tiers).status_code == 302
    judgment = Judgment.objects.get()
    assert judgment.ranking == [[ids[3]], [ids[2]], [ids[1]], [ids[0]]]
    assert judgment.ranking_basis == "confirmed"


# --- task pages are never cached; a page can ask whether its task is still held --------------------


def test_task_pages_are_sent_with_no_store(client, annotator):
    campaign = campaign_with_tasks(images=1, overlap=1)
    client.force_login(annotator)
    response = client.get(reverse("annotate:next", args=[campaign.pk]))
    assert "no-store" in response["Cache-Control"]


def test_task_state_says_when_the_task_was_submitted_elsewhere(client, annotator):
    campaign = campaign_with_tasks(images=1, overlap=1)
    client.force_login(annotator)
    task = _claim(campaign, annotator).task
    url = reverse("annotate:task_state", args=[campaign.pk, task.pk])
    assert client.get(url).json()["held"] is True
    ranking, ratings = answer_for(task)
    services.judgment_submit(
        user=annotator, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
    )
    state = client.get(url).json()
    assert state["held"] is False and "already submitted" in state["message"]
    assert "no-store" in client.get(url)["Cache-Control"]


# --- corrections: a new version, the old one kept, readers use the latest --------------------------


@pytest.fixture
def judged(annotator):
    campaign = campaign_with_tasks(images=3, overlap=2)
    other = make_user("otto", "annotator")
    judgments = {}
    for user in (annotator, other):
        task = _claim(campaign, user).task
        ranking, ratings = answer_for(task)
        judgments[user.username] = services.judgment_submit(
            user=user, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    return campaign, judgments


def test_a_correction_keeps_the_old_version_and_readers_see_only_the_latest(annotator, judged):
    campaign, judgments = judged
    judgment = judgments["anna"]
    task = judgment.task
    ids = services.task_caption_ids(task)
    reversed_ranking = [[cid] for cid in reversed(ids)]
    key = uuid.uuid4()
    revised = services.judgment_revise(
        judgment=judgment,
        user=annotator,
        ranking=reversed_ranking,
        ratings=_ratings(task, [1, 2, 3, 4]),
        client_key=key,
        ranking_basis=RankingBasis.ADJUSTED,
    )
    assert revised.version == 2 and revised.ranking == reversed_ranking and revised.revised_at
    old = JudgmentRevision.objects.get(judgment=judgment)
    assert old.version == 1 and old.ranking == [[cid] for cid in ids]
    # The same correction sent again is saved once.
    again = services.judgment_revise(
        judgment=judgment, user=annotator, ranking=[], ratings={}, client_key=key, ranking_basis="adjusted"
    )
    assert again.version == 2 and JudgmentRevision.objects.count() == 1
    # Readers: one judgment per annotator and task, the latest version.
    assert Judgment.objects.filter(task=task, user=annotator).count() == 1
    pairs = io.StringIO()
    preference_pairs_jsonl(campaign=campaign, stream=pairs)
    mine = [
        json.loads(line) for line in pairs.getvalue().splitlines() if json.loads(line)["annotator"] == "anna"
    ]
    position = {tier[0]: index for index, tier in enumerate(reversed_ranking)}
    assert len(mine) == 6 and all(position[p["chosen_id"]] < position[p["rejected_id"]] for p in mine)
    coco = io.StringIO()
    judgments_coco_hf(campaign=campaign, stream=coco)
    record = next(r for r in json.loads(coco.getvalue())["annotations"] if r["task_id"] == task.pk)
    (exported,) = [j for j in record["judgments"] if j["annotator"] == "anna"]
    assert exported["ranking"] == reversed_ranking and exported["version"] == 2
    from training.data import judgment_records

    records = [r for r in judgment_records(campaign=campaign) if r.user_id == annotator.pk]
    assert [r.ranking for r in records] == [reversed_ranking]
    stats = selectors.annotator_stats(campaign=campaign)
    assert next(row for row in stats if row["username"] == "anna")["judgments"] == 1


def test_only_the_latest_judgments_can_be_corrected(annotator, settings):
    settings.LOUPE_REVISE_LAST_JUDGMENTS = 1
    campaign = campaign_with_tasks(images=2, overlap=1)
    first = None
    for _ in range(2):
        task = _claim(campaign, annotator).task
        ranking, ratings = answer_for(task)
        made = services.judgment_submit(
            user=annotator, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
        first = first or made
    ranking, ratings = answer_for(first.task)
    with pytest.raises(JudgmentError, match="only your last 1"):
        services.judgment_revise(
            judgment=first,
            user=annotator,
            ranking=ranking,
            ratings=ratings,
            client_key=uuid.uuid4(),
            ranking_basis="confirmed",
        )


def test_someone_elses_judgment_cannot_be_opened_for_correction(client, annotator, judged):
    _, judgments = judged
    client.force_login(annotator)
    theirs = judgments["otto"]
    response = client.get(reverse("annotate:revise", args=[theirs.task.campaign_id, theirs.pk]))
    assert response.status_code == 404


def test_the_correction_page_shows_the_stored_answer_and_saves_a_new_version(client, annotator, judged):
    campaign, judgments = judged
    judgment = judgments["anna"]
    client.force_login(annotator)
    url = reverse("annotate:revise", args=[campaign.pk, judgment.pk])
    html = client.get(url).content.decode()
    assert "Correcting your judgment" in html and 'value="3" checked' in html
    ids = services.task_caption_ids(judgment.task)
    data = {"client_key": str(uuid.uuid4()), "ranking_basis": "form"}
    for cid, value in zip(ids, (5, 4, 3, 2), strict=True):
        data[f"tier_{cid}"] = ""
        for key in campaign.criterion_keys:
            data[f"rate_{cid}_{key}"] = str(value)
    response = client.post(url, data)
    assert response.status_code == 302
    judgment.refresh_from_db()
    assert judgment.version == 2 and judgment.ranking == [[cid] for cid in ids]
    assert "version 2" in client.get(response["Location"]).content.decode()


# --- annotators who click through -----------------------------------------------------------------


def test_an_annotator_whose_median_time_is_below_the_threshold_is_flagged(annotator, settings):
    settings.LOUPE_MIN_MEDIAN_SECONDS_PER_TASK = 2.0
    campaign = campaign_with_tasks(images=6, overlap=1)
    for _ in range(6):
        task = _claim(campaign, annotator).task
        ranking, ratings = answer_for(task)
        services.judgment_submit(
            user=annotator,
            task=task,
            ranking=ranking,
            ratings=ratings,
            client_key=uuid.uuid4(),
            duration_ms=600,
        )
    (row,) = selectors.annotator_stats(campaign=campaign)
    assert row["too_fast"] and row["flagged"] and not row["low_gold"]
