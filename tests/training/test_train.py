"""Training recovers a known hidden preference (simulated annotators), learns ties, is seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import TrainConfig
from training.evaluate import reward_model_evaluate
from training.pairs import training_data_build
from training.synthetic import synthetic_judgments, synthetic_pool
from training.train import train

FAST = dict(epochs=10, hidden=32, n_heads=3, batch_size=256, lr=5e-3)


def _data(n_images=400, mode="each", seed=1, **judge):
    pool = synthetic_pool(n_images=n_images, embed_dim=16, image_extra=8, seed=seed)
    judgments = synthetic_judgments(pool, seed=seed + 1, **judge)
    return _build(pool, judgments, mode)


def _build(pool, judgments, mode="each"):
    return training_data_build(
        judgments=judgments,
        caption_ids=pool.caption_ids,
        row_image_keys=pool.row_image_keys,
        image_feats=pool.image_feats,
        text_feats=pool.text_feats,
        embed_dim=pool.embed_dim,
        criteria=pool.criteria,
        mode=mode,
    )


def test_recovers_noise_free_preference_and_beats_clipscore():
    data = _data()
    result = train(TrainConfig(seed=0, **FAST), data)
    report = reward_model_evaluate(result.model, data, data.test)
    assert report["accuracy"] >= 0.9
    assert report["accuracy"] > report["clipscore_accuracy"] + 0.05
    assert all(rho > 0.5 for rho in report["spearman"].values())


def test_well_above_chance_with_label_noise():
    pool = synthetic_pool(n_images=400, embed_dim=16, image_extra=8, seed=1)
    noisy = _build(
        pool, synthetic_judgments(pool, noise=0.7, annotators_per_task=2, rating_noise=0.5, seed=2)
    )
    truth = _build(pool, synthetic_judgments(pool, seed=2))  # same images in the same splits
    result = train(TrainConfig(seed=0, **FAST), noisy)
    # Judged against the hidden preference itself: the noise is in the labels, not in the truth.
    assert reward_model_evaluate(result.model, truth, truth.test)["accuracy"] >= 0.8
    assert reward_model_evaluate(result.model, noisy, noisy.test)["accuracy"] >= 0.65


def test_ties_are_learned_as_ties():
    # Wide tie margin: most rankings hold tied captions.
    data = _data(tie_margin=0.6)
    tied = data.test.target == 0.5
    assert tied.sum() > 30 and (~tied).sum() > 30
    result = train(TrainConfig(seed=0, **FAST), data)
    report = reward_model_evaluate(result.model, data, data.test)
    with torch.no_grad():
        img_a, txt_a = data.rows(data.test.a)
        img_b, txt_b = data.rows(data.test.b)
        diff = (
            result.model(torch.as_tensor(img_a), torch.as_tensor(txt_a)).reward
            - result.model(torch.as_tensor(img_b), torch.as_tensor(txt_b)).reward
        )
    prob = torch.sigmoid(diff).numpy()
    # Tied pairs sit near 0.5, untied pairs confidently away from it.
    assert np.abs(prob[tied] - 0.5).mean() < 0.2
    assert np.abs(prob[tied] - 0.5).mean() < 0.6 * np.abs(prob[~tied] - 0.5).mean()
    assert report["tie_accuracy"] > 0.6


def test_same_seed_same_model_and_other_seed_differs():
    data = _data(n_images=120)
    config = TrainConfig(seed=3, **dict(FAST, epochs=3))
    first = train(config, data).model.state_dict()
    second = train(config, data).model.state_dict()
    other = train(TrainConfig(seed=4, **dict(FAST, epochs=3)), data).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["w1"], other["w1"])


def test_ensemble_members_disagree_more_away_from_the_data():
    data = _data(n_images=200)
    model = train(TrainConfig(seed=0, **FAST), data).model
    img, txt = data.rows(np.arange(len(data.text_feats)))
    with torch.no_grad():
        near = model(torch.as_tensor(img), torch.as_tensor(txt)).uncertainty.mean()
        far = model(torch.as_tensor(img) * 6, torch.as_tensor(txt) * 6).uncertainty.mean()
    assert float(far) > float(near)


def test_no_training_pairs_is_refused():
    data = _data(n_images=20)
    data.train = data.train.empty(len(data.criteria))
    with pytest.raises(ValueError, match="No training pairs"):
        train(TrainConfig(**FAST), data)


def test_encoder_finetuning_is_declared_not_implemented():
    with pytest.raises(ValueError, match="not implemented"):
        TrainConfig(finetune_encoder_blocks=2)


def test_should_stop_ends_training_between_epochs():
    from training.train import TrainingCancelled

    data = _data(n_images=100)
    epochs_seen: list[int] = []
    asked = iter([False, False, True])
    with pytest.raises(TrainingCancelled, match="after 2 of 10 epochs"):
        train(
            TrainConfig(seed=0, **FAST),
            data,
            progress=lambda epoch, epochs, record: epochs_seen.append(epoch),
            should_stop=lambda: next(asked),
        )
    assert epochs_seen == [1, 2]


def test_a_cancel_during_the_last_epoch_still_stops_training():
    from training.train import TrainingCancelled

    data = _data(n_images=100)
    cancelled = {"now": False}

    def progress(epoch, epochs, record):
        cancelled["now"] = epoch == epochs

    with pytest.raises(TrainingCancelled):
        train(
            TrainConfig(seed=0, **{**FAST, "epochs": 2}),
            data,
            progress=progress,
            should_stop=lambda: cancelled["now"],
        )
