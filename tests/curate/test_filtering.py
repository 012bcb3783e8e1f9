from __future__ import annotations

import numpy as np
import pytest

from curate.filtering import (
    FilterNeedsConfirm,
    FilterNeedsRewardModel,
    FilterRule,
    filter_plan,
    filter_preview,
    filter_run_create,
    filter_run_execute,
)
from pool.models import Caption, CaptionSource
from scoring.models import Score
from tests.curate.conftest import ENCODER, VERSION, make_caption, make_scored_pool

pytestmark = pytest.mark.django_db


def _run(rule: FilterRule, confirm: bool = False):
    run = filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=rule, confirm=confirm)
    return filter_run_execute(run=run)


def test_top_percent_counts_match_a_direct_query():
    make_scored_pool(50, images=25)
    run = _run(FilterRule(top_percent=30))
    usable = Score.objects.filter(
        encoder=ENCODER, reward_model_version=VERSION, caption__status="ok", caption__image__status="ok"
    )
    expected = sorted(usable.order_by("-reward").values_list("caption_id", flat=True)[:15])
    assert run.considered == usable.count() == 50
    assert run.kept == 15
    assert np.load(run.kept_file).tolist() == expected
    assert run.compression_ratio == pytest.approx(50 / 15)


def test_thresholds_and_criteria_combine_with_and():
    make_scored_pool(40, images=20)
    run = _run(FilterRule(top_percent=None, reward_min=10, cosine_min=0.25, criteria_min={"accuracy": 3}))
    expected = Score.objects.filter(
        encoder=ENCODER, reward__gte=10, cosine__gte=0.25, criteria__accuracy__gte=3
    ).values_list("caption_id", flat=True)
    assert sorted(np.load(run.kept_file).tolist()) == sorted(expected)
    assert 0 < run.kept < 40


def test_datacomp_preset_thresholds_on_cosine():
    make_scored_pool(40, images=20)
    run = _run(FilterRule.from_dict({"preset": "datacomp-0.28"}))
    assert run.rule["cosine_min"] == 0.28 and run.rule["top_percent"] is None
    assert run.kept == Score.objects.filter(cosine__gte=0.28).count()


def test_curator_decisions_override_the_rule_in_both_directions():
    captions = make_scored_pool(20, images=10)
    worst, best = captions[0], captions[-1]
    Caption.objects.filter(pk=worst.pk).update(decision="accept")
    Caption.objects.filter(pk=best.pk).update(decision="reject")
    run = _run(FilterRule(top_percent=25))
    kept = set(np.load(run.kept_file).tolist())
    assert worst.id in kept and best.id not in kept
    assert run.summary["accepted_against_rule"] == 1 and run.summary["rejected_against_rule"] == 1


def test_a_rewrite_replaces_its_original_and_is_a_candidate_itself():
    captions = make_scored_pool(10, images=10)
    original = captions[-1]  # the best pair: the rule alone would keep it
    Caption.objects.filter(pk=original.pk).update(decision="rewrite")
    rewrite = make_caption(original.image, "a better caption", source=CaptionSource.REWRITE, parent=original)
    run = _run(FilterRule(top_percent=30))
    kept = set(np.load(run.kept_file).tolist())
    assert original.id not in kept
    assert rewrite.id in kept  # not scored yet: kept on the curator's word
    assert run.summary["unscored_rewrites_kept"] == 1


def test_unusable_pairs_are_not_considered():
    captions = make_scored_pool(10, images=10)
    captions[9].image.status = "low_res"
    captions[9].image.save()
    run = _run(FilterRule(top_percent=100), confirm=True)
    assert run.considered == 9 and captions[9].id not in np.load(run.kept_file)


def test_a_rule_that_keeps_nothing_or_everything_needs_confirmation():
    make_scored_pool(10, images=10)
    with pytest.raises(FilterNeedsConfirm, match="keeps nothing"):
        filter_run_create(
            encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=None, reward_min=1e9)
        )
    with pytest.raises(FilterNeedsConfirm, match="keeps everything"):
        filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=100))
    run = _run(FilterRule(top_percent=100), confirm=True)
    assert run.kept == run.considered == 10


def test_preview_reports_counts_and_the_histogram_cut():
    make_scored_pool(20, images=10)
    preview = filter_preview(encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=50))
    assert (preview.considered, preview.kept) == (20, 10)
    assert sum(preview.counts) == 20 and preview.cut == 10.0 and not preview.warning


def test_balancing_without_embeddings_is_skipped_with_a_message():
    make_scored_pool(20, images=10)
    run = _run(FilterRule(top_percent=30, balance_clusters=3))
    assert run.kept == 6
    assert any("balanc" in message.lower() for message in run.summary["messages"])


def test_unknown_preset_and_bad_values_are_refused():
    with pytest.raises(ValueError, match="Unknown preset"):
        FilterRule.from_dict({"preset": "nope"})
    with pytest.raises(ValueError, match="1-5 scale"):
        FilterRule.from_dict({"criteria_min": {"accuracy": 9}})


def test_without_a_reward_model_top_k_percent_is_refused_unless_clipscore_ranking_is_asked(db):
    from tests.curate.conftest import make_image, make_score

    image = make_image(0)
    captions = [make_caption(image, f"clipscore only {i}") for i in range(10)]
    for i, caption in enumerate(captions):
        make_score(caption, reward_model_version=0, reward=None, cosine=0.1 + 0.02 * i)
    with pytest.raises(FilterNeedsRewardModel, match="needs a reward model"):
        filter_run_create(encoder=ENCODER, reward_model_version=0, rule=FilterRule(top_percent=30))
    # The loop before its first promotion asks for it explicitly.
    run = filter_run_create(
        encoder=ENCODER, reward_model_version=0, rule=FilterRule(top_percent=30), clipscore_ranking=True
    )
    run = filter_run_execute(run=run)
    kept = set(np.load(run.kept_file).tolist())
    assert kept == {c.id for c in captions[-3:]}
    assert run.params["rule_text"] == "top 30% by CLIPScore (no reward model yet)"


def test_best_caption_per_image_keeps_one_pair_per_image_the_best_passing_one():
    from pool.models import CaptionSource
    from tests.curate.conftest import make_caption, make_image, make_score

    image, other = make_image(1), make_image(2)
    alt = make_caption(image, "img_0042.jpg")
    rewrite = make_caption(image, "a red bicycle leaning on a brick wall", source=CaptionSource.MODEL)
    described = make_caption(image, "a bicycle", source=CaptionSource.MODEL)
    lone = make_caption(other, "a cat on a sofa")
    for caption, reward in ((alt, 0.1), (rewrite, 0.9), (described, 0.6), (lone, 0.5)):
        make_score(caption, reward=reward, cosine=0.3)
    both = FilterRule.from_dict({"top_percent": None, "reward_min": 0.4})
    best = FilterRule.from_dict({"top_percent": None, "reward_min": 0.4, "best_caption_per_image": True})
    assert set(filter_plan(encoder=ENCODER, reward_model_version=VERSION, rule=both).kept) == {
        rewrite,
        described,
        lone,
    }
    # The alt text fails; of the image's two passing model captions the better one stays: one pair per image.
    assert set(filter_plan(encoder=ENCODER, reward_model_version=VERSION, rule=best).kept) == {rewrite, lone}
    assert "the best caption of each image" in best.describe()
