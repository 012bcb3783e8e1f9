from __future__ import annotations

import pytest

from tests.annotate.factories import campaign_with_tasks


@pytest.fixture
def campaign(db):
    """A small campaign: 6 images, 4 captions each, overlap 2, no gold."""
    return campaign_with_tasks(name="Loop campaign", images=6, captions_per_image=4, overlap=2)
