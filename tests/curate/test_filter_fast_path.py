"""The fast evaluation (numpy over id sets, ``filter_evaluate``) keeps exactly what the SQL plan keeps."""

from __future__ import annotations

import numpy as np
import pytest

from curate.filtering import (
    FilterRule,
    _evaluate_by_plan,
    filter_evaluate,
    filter_run_create,
    filter_run_execute,
)
from pool.models import Caption, CaptionSource, Image
from scoring.models import Score
from tests.curate.conftest import ENCODER, VERSION, make_caption, make_score, make_scored_pool

pytestmark = pytest.mark.django_db

RULES = [
    FilterRule(top_percent=30),
    FilterRule(top_percent=55),
    FilterRule(top_percent=0.1),
    FilterRule(top_percent=100),
    FilterRule.from_dict({"preset": "datacomp-0.28"}),
    FilterRule(top_percent=None, reward_min=12.0),
    FilterRule(top_percent=40, cosine_min=0.2),
    FilterRule(top_percent=50, criteria_min={"accuracy": 2.5}),
    FilterRule(top_percent=None, cosine_min=0.25, criteria_min={"accuracy": 3}),
    FilterRule(top_percent=None),
]


def _messy_pool() -> None:
    """Unusable images and captions, every curator decision on passing and failing pairs, ties, pairs
    without a reward, scored and unscored rewrites, and scores of another model that must not count."""
    captions = make_scored_pool(60, images=20)
    Image.objects.filter(pk=captions[3].image_id).update(status="duplicate")
    Caption.objects.filter(pk__in=[captions[10].pk, captions[50].pk]).update(status="trivial")
    Caption.objects.filter(pk__in=[captions[0].pk, captions[59].pk, captions[45].pk]).update(
        decision="accept"
    )
    Caption.objects.filter(pk__in=[captions[58].pk, captions[5].pk]).update(decision="reject")
    Caption.objects.filter(pk__in=[captions[57].pk, captions[6].pk]).update(decision="rewrite")
    Score.objects.filter(caption__in=[captions[40], captions[41]]).update(reward=40.0)  # ties
    Score.objects.filter(caption__in=[captions[20], captions[21]]).update(reward=None, cosine=None)
    image = captions[57].image
    make_caption(image, "an unscored rewrite", source=CaptionSource.REWRITE, parent=captions[57])
    scored = make_caption(image, "a scored rewrite", source=CaptionSource.REWRITE, parent=captions[57])
    make_score(scored, reward=55.0, cosine=0.3, criteria={"accuracy": 4})
    make_caption(image, "a rejected rewrite", source=CaptionSource.REWRITE, decision="reject")
    make_caption(image, "an accepted unscored pair", decision="accept")
    bad = make_caption(captions[3].image, "rewrite of an unusable image", source=CaptionSource.REWRITE)
    make_score(bad, reward=99.0, cosine=0.5)
    other = make_caption(image, "scored by another model only")
    make_score(other, reward=1000.0, cosine=0.9, encoder="other:encoder")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.describe())
def test_fast_evaluation_equals_the_sql_plan(rule):
    _messy_pool()
    key = {"encoder": ENCODER, "reward_model_version": VERSION, "encoder_fingerprint": ""}
    fast = filter_evaluate(**key, rule=rule)
    reference = _evaluate_by_plan(key, rule)
    assert fast.kept.tolist() == reference.kept.tolist()
    assert fast.rule_part.tolist() == reference.rule_part.tolist()
    assert fast.considered == reference.considered
    assert fast.rule_passed == reference.rule_passed
    assert fast.overrides == reference.overrides
    assert fast.cutoff == reference.cutoff


def test_decision_overrides_show_in_the_run_summary():
    _messy_pool()
    run = filter_run_execute(
        run=filter_run_create(
            encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=30), confirm=True
        )
    )
    kept = set(np.load(run.kept_file).tolist())
    accepted = set(
        Caption.objects.filter(decision="accept", status="ok", image__status="ok").values_list(
            "id", flat=True
        )
    )
    rejected = set(Caption.objects.filter(decision__in=["reject", "rewrite"]).values_list("id", flat=True))
    assert accepted <= kept and not (rejected & kept)
    assert Caption.objects.get(text="an unscored rewrite").pk in kept
    assert Caption.objects.get(text="a scored rewrite").pk in kept
    assert Caption.objects.get(text="rewrite of an unusable image").pk not in kept
    assert run.summary["accepted_against_rule"] >= 2  # the worst pair and the unscored accepted one
    assert run.summary["rejected_against_rule"] == 1  # the best pair
    assert run.summary["unscored_rewrites_kept"] == 1


@pytest.mark.postgres
@pytest.mark.parametrize("in_table_order", [False, True])
def test_copy_columns_by_blocks_equals_the_copy_stream(in_table_order):
    """The array-per-block read returns the COPY stream's rows (in another order): ids across several
    blocks of 2^20, NULL floats as NaN, and the columns of each row kept together."""
    from django.db import connection

    from curate.filtering import copy_columns

    if connection.vendor != "postgresql":
        pytest.skip("binary arrays are a PostgreSQL path")
    sql = (
        "SELECT g, CASE WHEN g %% 3 = 0 THEN NULL ELSE g * 0.5 END, -g::float8 "
        "FROM generate_series(%s::bigint, %s::bigint, 997) AS g"
    )
    params = (5, 3_500_000)
    stream = copy_columns(sql, params, "iff", in_table_order=in_table_order)
    blocks = copy_columns(sql, params, "iff", in_table_order=in_table_order, by_blocks=True)
    order = np.argsort(blocks[0])
    assert np.array_equal(blocks[0][order], stream[0])
    assert np.array_equal(blocks[1][order], stream[1], equal_nan=True)
    assert np.array_equal(np.isnan(stream[1]), stream[0] % 3 == 0)
    assert np.array_equal(blocks[2][order], -stream[0].astype(np.float64))
    empty = copy_columns(sql, (10, 5), "iff", by_blocks=True)
    assert [len(c) for c in empty] == [0, 0, 0]
    with pytest.raises(ValueError, match="must be an id"):
        copy_columns(sql, params, "fii", by_blocks=True)
