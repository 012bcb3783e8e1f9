"""Scoring services: cached features, CLIPScore, reward scoring, chunked runs with upserts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pool.models import RunStatus
from scoring import inference
from scoring.active_model import ActiveModel, active_model_set
from scoring.encoders import encoder_load
from scoring.features import caption_features
from scoring.inference import scoring_chunk_score, scoring_run_sync
from scoring.models import Score, ScoringRun
from scoring.services import clipscore, scoring_run_cancel, scoring_run_plan, scoring_run_start
from tests.conftest import image_bytes
from tests.scoring.conftest import make_pool, pool_caption, pool_image

pytestmark = pytest.mark.django_db


class Counting:
    """Counts rows through an encoder's towers (the thing measured is the caching around them)."""

    def __init__(self, encoder, monkeypatch):
        self.images = self.texts = 0
        image_forward, text_forward = encoder._image_forward, encoder._text_forward

        def count_images(pixels):
            self.images += len(pixels)
            return image_forward(pixels)

        def count_texts(texts):
            self.texts += len(texts)
            return text_forward(texts)

        monkeypatch.setattr(encoder, "_image_forward", count_images)
        monkeypatch.setattr(encoder, "_text_forward", count_texts)


def test_clipscore_is_two_and_a_half_times_the_positive_cosine():
    np.testing.assert_allclose(clipscore(np.array([-0.3, 0.0, 0.2, 1.0])), [0.0, 0.0, 0.5, 2.5])


def test_cache_hits_skip_encoding(tiny_clip_name, monkeypatch):
    captions = make_pool(4, captions_per_image=3)
    counter = Counting(encoder_load(tiny_clip_name), monkeypatch)
    ids = [c.id for c in captions]
    first = caption_features(encoder=tiny_clip_name, caption_ids=ids)
    # Each image once though it has three captions; each distinct text once.
    assert (counter.images, counter.texts) == (4, 12)
    second = caption_features(encoder=tiny_clip_name, caption_ids=ids)
    assert (counter.images, counter.texts) == (4, 12)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2] == ids


def test_caption_features_leaves_out_unreadable_images(tiny_clip_name):
    good = make_pool(2, captions_per_image=1)
    broken = pool_caption(pool_image(b"\xff\xd8\xff not really a jpeg"), "a broken picture")
    image, text, kept = caption_features(
        encoder=tiny_clip_name, caption_ids=[broken.id, good[0].id, good[1].id]
    )
    assert kept == [good[0].id, good[1].id]
    assert image.shape == (2, 32) and text.shape == (2, 32) and image.dtype == np.float32


def test_scoring_run_scores_every_usable_pair_once(tiny_clip_name):
    captions = make_pool(5, captions_per_image=2)
    run = scoring_run_start(encoder=tiny_clip_name, chunk_size=3, enqueue=False)
    run = scoring_run_sync(run=run)
    assert run.status == RunStatus.SUCCEEDED
    assert (run.chunks_total, run.chunks_done, run.done, run.total) == (4, 4, 10, 10)
    scores = Score.objects.filter(encoder=tiny_clip_name)
    assert scores.count() == 10
    assert set(scores.values_list("caption_id", flat=True)) == {c.id for c in captions}
    for score in scores:
        assert score.clipscore == pytest.approx(2.5 * max(score.cosine, 0.0))
        assert score.reward is None and score.reward_model_version == 0 and score.error == ""


def test_stored_cosine_matches_the_encoder(tiny_clip_name):
    caption = make_pool(1, captions_per_image=1)[0]
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    image, text, _ = caption_features(encoder=tiny_clip_name, caption_ids=[caption.id])
    score = Score.objects.get(caption=caption)
    assert score.cosine == pytest.approx(float(image[0] @ text[0]), abs=1e-5)


def test_rescoring_upserts_instead_of_duplicating(tiny_clip_name):
    make_pool(3)
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    before = dict(Score.objects.values_list("caption_id", "clipscore"))
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    assert Score.objects.count() == 6
    assert dict(Score.objects.values_list("caption_id", "clipscore")) == before


def test_a_chunk_delivered_twice_counts_once(tiny_clip_name):
    make_pool(3)
    run = scoring_run_start(encoder=tiny_clip_name, chunk_size=4, enqueue=False)
    pending = scoring_run_plan(run=run)
    assert pending == [0, 1]
    assert scoring_chunk_score(run_id=run.pk, chunk_index=0) == "scored"
    # Redelivered after a worker died between commit and ack: nothing changes.
    assert scoring_chunk_score(run_id=run.pk, chunk_index=0) == "already done"
    run.refresh_from_db()
    assert (run.done, run.chunks_done) == (4, 1)
    assert scoring_chunk_score(run_id=run.pk, chunk_index=1) == "scored"
    run.refresh_from_db()
    assert (run.status, run.done, run.chunks_done) == (RunStatus.SUCCEEDED, 6, 2)
    assert Score.objects.count() == 6


def test_corrupt_image_marks_its_pairs_unscorable_and_the_run_goes_on(tiny_clip_name):
    make_pool(3, captions_per_image=1)
    broken = pool_caption(pool_image(b"\xff\xd8\xff truncated"), "a broken picture")
    run = scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, chunk_size=2, enqueue=False))
    assert run.status == RunStatus.SUCCEEDED
    assert (run.done, run.failed_pairs) == (4, 1)
    bad = Score.objects.get(caption=broken)
    assert "cannot read image" in bad.error and bad.clipscore is None
    assert Score.objects.filter(error="", clipscore__isnull=False).count() == 3


def test_long_captions_are_marked_truncated(tiny_clip_name):
    image = pool_image(image_bytes(seed=9))
    short = pool_caption(image, "a short caption")
    long = pool_caption(image, "a very long caption " * 40)
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    assert Score.objects.get(caption=short).truncated is False
    assert Score.objects.get(caption=long).truncated is True


def test_cancelled_run_scores_nothing_more(tiny_clip_name):
    make_pool(2)
    run = scoring_run_start(encoder=tiny_clip_name, chunk_size=2, enqueue=False)
    scoring_run_plan(run=run)
    assert scoring_run_cancel(run=run) is True
    assert scoring_chunk_score(run_id=run.pk, chunk_index=0) == "run cancelled"
    assert Score.objects.count() == 0
    assert scoring_run_cancel(run=run) is False


def test_empty_pool_run_succeeds_at_once(tiny_clip_name):
    run = scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    assert run.status == RunStatus.SUCCEEDED and run.total == 0


def test_unknown_encoder_is_refused_before_a_run_exists():
    with pytest.raises(ValueError, match="Unknown encoder"):
        scoring_run_start(encoder="nope")
    assert ScoringRun.objects.count() == 0


def test_start_enqueues_the_run_on_commit(tiny_clip_name, eager_celery, django_capture_on_commit_callbacks):
    make_pool(2)
    with django_capture_on_commit_callbacks(execute=True):
        run = scoring_run_start(encoder=tiny_clip_name, chunk_size=1)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and Score.objects.count() == 4


def _save_reward_model(path, encoder, criteria=("accuracy", "detail")):
    from scoring.reward_model import RewardEnsemble, RewardHeadConfig, save_checkpoint

    torch.manual_seed(0)
    model = RewardEnsemble(
        RewardHeadConfig(
            image_dim=encoder.image_feature_dim,
            text_dim=encoder.text_feature_dim,
            n_heads=3,
            criteria=list(criteria),
        )
    )
    return save_checkpoint(path, model, {"encoder": encoder.name, "criteria": list(criteria), "version": 7})


def test_active_reward_model_gives_reward_criteria_and_uncertainty(tiny_clip_name, settings, tmp_path):
    make_pool(3)
    encoder = encoder_load(tiny_clip_name)
    path = tmp_path / "rm.pt"
    sha = _save_reward_model(path, encoder)
    active_model_set(model=ActiveModel(tiny_clip_name, 7, str(path), sha), encoder=tiny_clip_name)
    run = scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    assert run.reward_model_version == 7 and run.status == RunStatus.SUCCEEDED
    scores = Score.objects.filter(reward_model_version=7)
    assert scores.count() == 6
    image, text, ids = caption_features(
        encoder=tiny_clip_name, caption_ids=list(scores.values_list("caption_id", flat=True))
    )
    model, _ = inference.reward_model_load(str(path), sha)
    expected = dict(zip(ids, inference.reward_predict(model, image, text)[0].tolist(), strict=True))
    for score in scores:
        assert score.reward == pytest.approx(expected[score.caption_id], abs=1e-5)
        assert set(score.criteria) == {"accuracy", "detail"}
        assert score.uncertainty is not None and score.uncertainty >= 0
        assert score.clipscore is not None


def test_reward_model_of_another_encoder_is_refused(tiny_clip_name, tmp_path):
    encoder = encoder_load(tiny_clip_name)
    path = tmp_path / "rm.pt"
    sha = _save_reward_model(path, encoder)
    active_model_set(
        model=ActiveModel("offline:effnet-minilm", 3, str(path), sha), encoder="offline:effnet-minilm"
    )
    with pytest.raises(ValueError, match="was trained on"):
        scoring_run_start(encoder="offline:effnet-minilm", reward_model_version=3, enqueue=False)


def test_reward_model_trained_on_other_weights_behind_the_name_is_refused(tiny_clip_name, tmp_path):
    from scoring.reward_model import RewardEnsemble, RewardHeadConfig, save_checkpoint

    encoder = encoder_load(tiny_clip_name)
    path = tmp_path / "rm.pt"
    model = RewardEnsemble(
        RewardHeadConfig(image_dim=encoder.image_feature_dim, text_dim=encoder.text_feature_dim)
    )
    meta = {"encoder": tiny_clip_name, "version": 4, "encoder_fingerprint": "0123456789abcdef"}
    sha = save_checkpoint(path, model, meta)
    active_model_set(model=ActiveModel(tiny_clip_name, 4, str(path), sha), encoder=tiny_clip_name)
    with pytest.raises(ValueError, match="with weights 0123456789abcdef.*retrain"):
        scoring_run_start(encoder=tiny_clip_name, reward_model_version=4, enqueue=False)


def test_a_checkpoint_replaced_after_the_run_started_fails_the_run(tiny_clip_name, tmp_path):
    make_pool(2)
    encoder = encoder_load(tiny_clip_name)
    path = tmp_path / "rm.pt"
    sha = _save_reward_model(path, encoder)
    active_model_set(model=ActiveModel(tiny_clip_name, 7, str(path), sha), encoder=tiny_clip_name)
    run = scoring_run_start(encoder=tiny_clip_name, enqueue=False)
    assert run.reward_checkpoint_sha256 == sha
    _save_reward_model(path, encoder, criteria=("accuracy",))  # other weights, same path
    with pytest.raises(Exception, match="not the file this run started with"):
        scoring_run_sync(run=run)
    assert not Score.objects.exists()
