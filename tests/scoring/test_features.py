"""Pair rows for scoring: where each pair's image is read from."""

from __future__ import annotations

import pytest

from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db


def test_pair_rows_locate_images_indexed_in_place(tmp_path):
    from pool.importing import pool_import
    from pool.models import Caption
    from pool.storage import Locator
    from scoring.features import pair_rows
    from tests.pool.conftest import write_tar

    shard = write_tar(tmp_path / "s.tar", [("a.jpg", image_bytes(seed=1)), ("a.txt", b"in place")])
    pool_import(source=str(shard))
    (row,) = pair_rows(Caption.objects.values_list("pk", flat=True))
    assert isinstance(row.image_path, Locator) and row.image_path.uri == str(shard)
    assert row.image_path.sha256 == row.image_sha256
