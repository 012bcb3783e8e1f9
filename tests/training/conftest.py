"""Training tests: synthetic features stand in for the embedding cache (the encoders are the scoring
app's concern and are exercised by the system test through a real worker)."""

from __future__ import annotations

import pytest

import scoring.features
import training.data
from tests.training.factories import features_from, judged_campaign


@pytest.fixture
def synthetic_features(monkeypatch):
    """Install synthetic features for the given judged campaigns; returns the installer."""

    def install(*campaigns, embed_dim: int = 16):
        monkeypatch.setattr(scoring.features, "caption_features", features_from(*campaigns))
        monkeypatch.setattr(training.data, "encoder_embed_dim", lambda encoder: embed_dim)

    return install


@pytest.fixture
def judged(db, synthetic_features):
    jc = judged_campaign(n_images=60)
    synthetic_features(jc)
    return jc
