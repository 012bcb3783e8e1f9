"""The reward model module (scoring/reward_model.py): shapes, checkpoint round trip, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring.checkpoint_meta import checkpoint_meta_read
from scoring.reward_model import (
    CheckpointError,
    RewardEnsemble,
    RewardHeadConfig,
    load_checkpoint,
    save_checkpoint,
)


def _model(**overrides) -> RewardEnsemble:
    torch.manual_seed(0)
    cfg = dict(image_dim=12, text_dim=10, embed_dim=8, hidden=16, n_heads=3, criteria=["a", "b"])
    cfg.update(overrides)
    return RewardEnsemble(RewardHeadConfig(**cfg))


def test_forward_shapes_and_criteria_on_rating_scale():
    model = _model().eval()
    out = model(torch.randn(7, 12), torch.randn(7, 10))
    assert out.reward.shape == (7,)
    assert out.rewards.shape == (3, 7)
    assert out.criteria.shape == (7, 2)
    assert out.uncertainty.shape == (7,)
    assert torch.all(out.criteria >= 1) and torch.all(out.criteria <= 5)
    assert torch.allclose(out.reward, out.rewards.mean(dim=0))
    assert torch.all(out.uncertainty > 0)


def test_forward_accepts_numpy_float32():
    model = _model().eval()
    out = model(np.ones((2, 12), np.float32), np.ones((2, 10), np.float32))
    assert out.reward.shape == (2,)


def test_wrong_feature_width_says_which():
    model = _model().eval()
    with pytest.raises(ValueError, match="another encoder"):
        model(torch.randn(2, 11), torch.randn(2, 10))


def test_config_needs_embed_dim_when_widths_differ():
    with pytest.raises(ValueError, match="embed_dim"):
        RewardHeadConfig(image_dim=4, text_dim=3)


def test_checkpoint_round_trip_gives_same_outputs(tmp_path):
    model = _model().eval()
    x_img, x_txt = torch.randn(5, 12), torch.randn(5, 10)
    path = tmp_path / "m" / "v1.pt"
    digest = save_checkpoint(path, model, {"encoder": "offline:x", "version": 1})
    assert len(digest) == 64
    loaded, meta = load_checkpoint(path)
    assert meta["encoder"] == "offline:x" and meta["version"] == 1 and meta["criteria"] == ["a", "b"]
    assert not loaded.training
    with torch.no_grad():
        assert torch.allclose(loaded(x_img, x_txt).reward, model(x_img, x_txt).reward)
    # No temp file left behind; the JSON description beside it lets the web tier check the encoder.
    assert sorted(p.name for p in path.parent.iterdir()) == ["v1.pt", "v1.pt.meta.json"]
    assert checkpoint_meta_read(path)["encoder"] == "offline:x"


def test_corrupt_checkpoint_raises_clear_error(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_missing_checkpoint_raises_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
