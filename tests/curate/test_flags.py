from __future__ import annotations

import uuid

import pytest

from annotate.models import Campaign, Judgment, Task, TaskCaption
from curate.flags import flags_refresh
from curate.models import Flag
from tests.conftest import make_user
from tests.curate.conftest import ENCODER, VERSION, make_caption, make_image, make_score, make_scored_pool

pytestmark = pytest.mark.django_db


def _open(reason: str) -> set[int]:
    return set(Flag.objects.filter(reason=reason, is_open=True).values_list("caption_id", flat=True))


def test_low_reward_flags_the_bottom_share_with_its_scores():
    captions = make_scored_pool(20, images=10)
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION, low_reward_share=0.1)
    assert _open("low_reward") == {captions[0].id, captions[1].id}
    details = Flag.objects.get(caption=captions[0], reason="low_reward").details
    assert details["reward"] == 0.0 and details["encoder"] == ENCODER and "cosine" in details


def test_low_reward_ignores_unusable_pairs():
    captions = make_scored_pool(10, images=10)
    captions[0].status = "rejected"
    captions[0].save()
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION, low_reward_share=0.1)
    assert _open("low_reward") == {captions[1].id}


def test_disagreement_flags_pairs_ranked_far_apart_by_reward_and_clipscore():
    image = make_image(1)
    agree = [make_caption(image, f"agree {i}") for i in range(8)]
    for i, caption in enumerate(agree):
        make_score(caption, reward=float(i), cosine=0.1 + 0.02 * i)
    odd = make_caption(image, "high reward but low cosine")
    make_score(odd, reward=100.0, cosine=0.0)
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION, disagreement_threshold=0.6)
    assert _open("disagreement") == {odd.id}
    details = Flag.objects.get(caption=odd, reason="disagreement").details
    assert details["reward_percentile"] == 1.0 and details["clipscore_percentile"] == 0.0


def test_truncated_captions_are_flagged():
    image = make_image(2)
    short = make_caption(image, "short")
    long = make_caption(image, "long " * 100)
    make_score(short, reward=1.0, cosine=0.2)
    make_score(long, reward=1.0, cosine=0.2, truncated=True)
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION)
    assert _open("truncated") == {long.id}


def test_near_duplicate_cluster_flags_duplicates_and_their_kept_image():
    kept = make_image(3)
    dup = make_image(4, status="near_duplicate", duplicate_of=kept, reason="phash distance 3")
    other = make_image(5)
    kept_caption = make_caption(kept, "a cat")
    dup_caption = make_caption(dup, "a cat again")
    make_caption(other, "a dog")
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION)
    assert _open("near_duplicate") == {kept_caption.id, dup_caption.id}
    assert Flag.objects.get(caption=dup_caption, reason="near_duplicate").details["kept_image_id"] == kept.id


def test_low_agreement_flags_tasks_whose_annotators_rank_in_opposite_orders():
    image = make_image(6)
    a, b, c = (make_caption(image, text) for text in ("one", "two", "three"))
    campaign = Campaign.objects.create(name="c")
    task = Task.objects.create(campaign=campaign, image=image)
    for position, caption in enumerate((a, b, c)):
        TaskCaption.objects.create(task=task, caption=caption, position=position)
    agreeing_task = Task.objects.create(campaign=campaign, image=image)
    d = make_caption(image, "four")
    TaskCaption.objects.create(task=agreeing_task, caption=d, position=0)
    rankings = [[[a.id], [b.id], [c.id]], [[c.id], [b.id], [a.id]]]
    for index, ranking in enumerate(rankings):
        user = make_user(f"u{index}", "annotator")
        Judgment.objects.create(task=task, user=user, ranking=ranking, ratings={}, client_key=uuid.uuid4())
        Judgment.objects.create(
            task=agreeing_task, user=user, ranking=[[d.id]], ratings={}, client_key=uuid.uuid4()
        )
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION)
    assert _open("low_agreement") == {a.id, b.id, c.id}
    assert Flag.objects.get(caption=a, reason="low_agreement").details["mean_kendall_tau"] == -1.0


def test_refresh_is_idempotent_and_closes_flags_whose_condition_no_longer_holds():
    captions = make_scored_pool(10, images=10)
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION, low_reward_share=0.1)
    first = Flag.objects.get(caption=captions[0], reason="low_reward")
    flags_refresh(encoder=ENCODER, reward_model_version=VERSION, low_reward_share=0.1)
    assert Flag.objects.filter(reason="low_reward").count() == 1
    # The pair is rescored high: its flag closes, and the new lowest pair is flagged.
    captions[0].scores.update(reward=99.0)
    counts = flags_refresh(encoder=ENCODER, reward_model_version=VERSION, low_reward_share=0.1)
    first.refresh_from_db()
    assert first.is_open is False
    assert _open("low_reward") == {captions[1].id}
    assert counts["low_reward"] == {"open": 1, "closed": 1}
