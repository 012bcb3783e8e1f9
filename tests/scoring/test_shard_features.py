"""The by-shard feature layout: atomic writes, replacement on rerun, memory-mapped reads."""

import numpy as np
import pytest

from scoring.cache import CacheError
from scoring.shard_features import (
    shard_features_ids,
    shard_features_iter,
    shard_features_read,
    shard_features_root,
    shard_features_write,
)


def _write(root, shard_id, n_images=3, seed=0):
    rng = np.random.default_rng(seed)
    return shard_features_write(
        root,
        "open_clip:tiny",
        "abc",
        shard_id,
        image_ids=np.arange(n_images) + 10,
        images=rng.standard_normal((n_images, 4)),
        caption_ids=np.arange(2 * n_images) + 100,
        texts=rng.standard_normal((2 * n_images, 4)),
        caption_image_row=np.repeat(np.arange(n_images), 2),
    )


def test_write_read_and_pair_arrays(tmp_path):
    folder = _write(tmp_path, 7)
    got = shard_features_read(folder)
    assert got.shard_id == 7 and got.meta["captions"] == 6 and got.images.dtype == np.float16
    image, text = got.pair_arrays()
    assert image.shape == text.shape == (6, 4)
    np.testing.assert_array_equal(image[0], image[1])
    assert shard_features_ids(tmp_path, "open_clip:tiny", "abc") == [7]


def test_rewrite_replaces_whole_shard_and_ignores_partial_folders(tmp_path):
    _write(tmp_path, 1, n_images=3)
    _write(tmp_path, 1, n_images=5, seed=1)
    (shard_features_root(tmp_path, "open_clip:tiny", "abc") / "2").mkdir()  # no done.json: invisible
    shards = list(shard_features_iter(tmp_path, "open_clip:tiny", "abc"))
    assert [s.shard_id for s in shards] == [1] and len(shards[0].image_ids) == 5
    assert [
        p.name
        for p in shard_features_root(tmp_path, "open_clip:tiny", "abc").iterdir()
        if p.name.startswith(".")
    ] == []


def test_inconsistent_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        shard_features_write(
            tmp_path,
            "e",
            "",
            1,
            image_ids=[1],
            images=np.zeros((1, 2)),
            caption_ids=[5],
            texts=np.zeros((1, 2)),
            caption_image_row=[3],
        )
    with pytest.raises(CacheError):
        shard_features_read(tmp_path / "missing")


def test_shard_caption_rows_finds_rows_by_binary_search(tmp_path):
    from scoring.shard_features import shard_caption_rows

    got = shard_features_read(_write(tmp_path, 3, n_images=4))  # captions 100..107, two per image
    found, image, text = shard_caption_rows(got, np.array([107, 5, 101, 101, 104]))
    assert found.tolist() == [101, 104, 107]
    np.testing.assert_array_equal(image, np.asarray(got.images)[[0, 2, 3]])
    np.testing.assert_array_equal(text, np.asarray(got.texts)[[1, 4, 7]])
    assert len(shard_caption_rows(got, np.array([1, 2]))[0]) == 0
