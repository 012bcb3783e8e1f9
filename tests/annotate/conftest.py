from __future__ import annotations

import pytest

from tests.conftest import make_user


@pytest.fixture
def annotators(db):
    """Factory: ``annotators(3)`` returns three users with the annotator role."""

    def make(n: int, prefix: str = "ann"):
        return [make_user(f"{prefix}{i}", "annotator") for i in range(n)]

    return make
