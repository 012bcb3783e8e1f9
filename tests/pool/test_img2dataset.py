"""img2dataset's three output formats, written by the real img2dataset from a local HTTP server,
import as they are: identity from the source, failed downloads with img2dataset's own reason, one
caption per sample."""

from __future__ import annotations

import pytest

from pool.importing import pool_import
from pool.locate import image_read
from pool.models import Caption, Image, RunStatus, Shard

pytestmark = [pytest.mark.system, pytest.mark.django_db]

COUNT = 8


@pytest.fixture(scope="module")
def i2d(tmp_path_factory):
    from tests.pool.conftest import img2dataset_pool

    return img2dataset_pool(
        tmp_path_factory.mktemp("i2d"), count=COUNT, formats=("webdataset", "parquet", "files")
    )


@pytest.mark.parametrize("fmt", ["webdataset", "parquet", "files"])
def test_each_img2dataset_output_format_imports_as_it_is(i2d, fmt):
    run = pool_import(source=str(i2d["out"] / fmt))
    assert run.status == RunStatus.SUCCEEDED and run.format == fmt
    assert Shard.objects.count() == 2  # 9 URLs, 5 per shard
    by_uid = {row["uid"]: row for row in i2d["rows"]}
    captions = list(Caption.objects.select_related("image", "image__shard"))
    assert {c.uid for c in captions} == {row["uid"] for row in i2d["rows"][:COUNT]}
    for caption in captions:
        row = by_uid[caption.uid]
        # One sample, one caption: the two-line caption stays whole.
        assert caption.text == row["caption"] and caption.url == row["url"] and not caption.uid_derived
        assert caption.meta["license"] == row["license"]
        served = (i2d["out"].parent / "www" / row["url"].rsplit("/", 1)[1]).read_bytes()
        assert image_read(caption.image) == served
        # img2dataset's own sha256 of what it stored is the image's content key.
        assert caption.meta["sha256"] == caption.image.sha256
    (failed,) = [s for s in run.summary["skips"] if s["code"] == "download_failed"]
    assert "img2dataset could not fetch it" in failed["reason"] and "404" in failed["reason"]
    assert not Image.objects.exclude(file="").exists()  # nothing copied
