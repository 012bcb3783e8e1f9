"""The filter page before any reward model exists opens on a rule it can run."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.curate.conftest import make_caption, make_image, make_score

pytestmark = pytest.mark.django_db


def test_the_first_visit_without_a_reward_model_opens_on_datacomps_clipscore_filter(client, curator):
    for i in range(4):
        caption = make_caption(make_image(i), f"pair {i}")
        make_score(caption, reward_model_version=0, reward=None, cosine=0.2 + i / 20)
    client.force_login(curator)
    page = client.get(reverse("filters:index")).content.decode()
    assert "needs a reward model" not in page
    assert '<option value="datacomp-0.28" selected>' in page
