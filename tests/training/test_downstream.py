"""The downstream model: a LiT-style pair of projections on frozen features, trained with CLIP's loss and
measured by zero-shot retrieval. Synthetic pairs: image and text features are two noisy linear views of
one latent vector, so a model that learns the views' shared latent can retrieve each pair's partner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.downstream import (
    DownstreamConfig,
    LitModel,
    batch_indices,
    clip_loss,
    evaluate_retrieval,
    metrics_summary,
    subset_evaluate,
    train_lit,
)

LATENT, IMAGE_DIM, TEXT_DIM = 12, 40, 24
FAST = {"steps": 150, "batch_size": 64, "proj_dim": 32}


def noisy_views(n: int, *, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs whose two sides are fixed linear maps of a shared latent plus independent noise."""
    maps = np.random.default_rng(1234)
    to_image = maps.normal(size=(LATENT, IMAGE_DIM))
    to_text = maps.normal(size=(LATENT, TEXT_DIM))
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, LATENT))
    image = latent @ to_image + noise * rng.normal(size=(n, IMAGE_DIM))
    text = latent @ to_text + noise * rng.normal(size=(n, TEXT_DIM))
    return image.astype(np.float32), text.astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matmuls: on a shared machine extra OpenMP threads mostly spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs():
    return {"train": noisy_views(600, seed=0, noise=2.0), "test": noisy_views(100, seed=1, noise=2.0)}


def test_model_learns_retrieval_well_above_chance(pairs):
    metrics = subset_evaluate(DownstreamConfig(**FAST), *pairs["train"], *pairs["test"])
    chance_r1, chance_r5 = 1 / 100, 5 / 100
    assert metrics["i2t_r1"] > 10 * chance_r1 and metrics["t2i_r1"] > 10 * chance_r1
    assert metrics["i2t_r5"] > 6 * chance_r5 and metrics["t2i_r5"] > 6 * chance_r5


def test_training_lowers_the_contrastive_loss(pairs):
    result = train_lit(DownstreamConfig(**FAST), *pairs["train"])
    assert result.history[-1] < 0.6 * result.history[0]


def test_training_is_deterministic_for_a_seed(pairs):
    first = train_lit(DownstreamConfig(**FAST, seed=3), *pairs["train"]).model.state_dict()
    again = train_lit(DownstreamConfig(**FAST, seed=3), *pairs["train"]).model.state_dict()
    other = train_lit(DownstreamConfig(**FAST, seed=4), *pairs["train"]).model.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["image_proj.weight"], other["image_proj.weight"])


def test_training_leaves_the_global_torch_seed_alone(pairs):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    train_lit(DownstreamConfig(**{**FAST, "steps": 2}), *pairs["train"])
    assert torch.equal(torch.rand(3), expected)


def test_shuffled_captions_train_a_worse_model_than_matched_ones(pairs):
    image, text = pairs["train"]
    shuffled = text[np.random.default_rng(7).permutation(len(text))]
    matched = subset_evaluate(DownstreamConfig(**FAST), image, text, *pairs["test"])
    mismatched = subset_evaluate(DownstreamConfig(**FAST), image, shuffled, *pairs["test"])
    assert mismatched["i2t_r5"] < matched["i2t_r5"] - 0.3
    assert mismatched["t2i_r5"] < matched["t2i_r5"] - 0.3


def test_one_hidden_layer_towers_learn_too(pairs):
    metrics = subset_evaluate(DownstreamConfig(**FAST, hidden=32), *pairs["train"], *pairs["test"])
    assert metrics["i2t_r5"] > 0.3


def test_every_subset_gets_the_same_number_of_steps_and_batch_size():
    config = DownstreamConfig(steps=25, batch_size=8)
    for n in (10, 64, 1000):
        batches = batch_indices(n, config, np.random.default_rng(0))
        assert len(batches) == 25
        assert all(len(b) == 8 and len(set(b.tolist())) == 8 for b in batches)


def test_a_subset_smaller_than_a_batch_trains_on_all_of_it_each_step():
    batches = batch_indices(5, DownstreamConfig(steps=3, batch_size=8), np.random.default_rng(0))
    assert [sorted(b.tolist()) for b in batches] == [[0, 1, 2, 3, 4]] * 3


def test_passes_cover_every_pair_before_repeating_one():
    batches = batch_indices(12, DownstreamConfig(steps=3, batch_size=4), np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(12))


def _identity_model(dim: int) -> LitModel:
    model = LitModel(dim, dim, DownstreamConfig(proj_dim=dim))
    with torch.no_grad():
        for proj in (model.image_proj, model.text_proj):
            proj.weight.copy_(torch.eye(dim))
            proj.bias.zero_()
    return model.eval()


def test_retrieval_recall_is_one_when_partners_are_identical_and_zero_when_rolled():
    feats = np.eye(6, dtype=np.float32) + 0.01
    model = _identity_model(6)
    assert evaluate_retrieval(model, feats, feats) == {
        "i2t_r1": 1.0,
        "i2t_r5": 1.0,
        "t2i_r1": 1.0,
        "t2i_r5": 1.0,
    }
    rolled = evaluate_retrieval(model, feats, np.roll(feats, 1, axis=0))
    assert rolled["i2t_r1"] == 0.0 and rolled["t2i_r1"] == 0.0


def test_clip_loss_is_symmetric_and_small_for_a_confident_diagonal():
    logits = torch.eye(4) * 20
    assert float(clip_loss(logits)) < 1e-6
    skewed = torch.tensor([[5.0, 1.0], [3.0, 0.0]])
    assert torch.isclose(clip_loss(skewed), clip_loss(skewed.T))


def test_summary_gives_mean_and_spread_over_seeds():
    summary = metrics_summary([{"i2t_r1": 0.2}, {"i2t_r1": 0.4}])
    assert summary["mean"]["i2t_r1"] == pytest.approx(0.3)
    assert summary["std"]["i2t_r1"] == pytest.approx(0.1)


def test_config_refuses_a_batch_without_negatives():
    with pytest.raises(ValueError, match="batch_size"):
        DownstreamConfig(batch_size=1)


def test_misaligned_pairs_are_refused():
    with pytest.raises(ValueError, match="align"):
        train_lit(DownstreamConfig(**FAST), np.zeros((4, 3)), np.zeros((5, 3)))
