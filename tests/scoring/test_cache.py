"""The embedding cache: content-keyed float16 shards, atomic, shared by processes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from scoring.cache import CacheError, EmbeddingCache
from tests.conftest import REPO_ROOT, unprivileged

SHA_A, SHA_B, SHA_C = ("a" * 64, "b" * 64, "c" * 64)


def test_rows_come_back_by_key_with_a_found_mask(tmp_path):
    cache = EmbeddingCache("open_clip:x:y", root=tmp_path)
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    cache.put_images([SHA_A, SHA_B], rows)
    got, found = cache.get_images([SHA_B, SHA_C, SHA_A])
    assert found.tolist() == [True, False, True]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got[[0, 2]], rows[[1, 0]].astype(np.float16))


def test_nothing_cached_returns_none_and_an_empty_mask(tmp_path):
    got, found = EmbeddingCache("enc", root=tmp_path).get_texts([SHA_A])
    assert got is None and found.tolist() == [False]


def test_images_and_texts_are_separate_key_spaces(tmp_path):
    cache = EmbeddingCache("enc", root=tmp_path)
    cache.put_texts([SHA_A], np.ones((1, 4)))
    assert cache.get_images([SHA_A])[1].tolist() == [False]


def test_another_process_sees_shards_written_after_it_opened(tmp_path):
    reader = EmbeddingCache("enc", root=tmp_path)
    assert reader.get_images([SHA_A])[1].tolist() == [False]
    EmbeddingCache("enc", root=tmp_path).put_images([SHA_A], np.full((1, 2), 0.5))
    got, found = reader.get_images([SHA_A])
    assert found.tolist() == [True] and got[0].tolist() == [0.5, 0.5]


def test_a_shard_without_its_keys_file_is_invisible(tmp_path):
    """A crash between writing the values and the keys leaves nothing half-visible."""
    cache = EmbeddingCache("enc", root=tmp_path)
    cache.put_images([SHA_A], np.ones((1, 2)))
    keys = next((cache.folder / "images").glob("*.keys.npy"))
    keys.unlink()
    fresh = EmbeddingCache("enc", root=tmp_path)
    assert fresh.get_images([SHA_A])[1].tolist() == [False]
    assert not list((cache.folder / "images").glob(".tmp-*"))


def test_encoders_and_weight_fingerprints_get_separate_folders(tmp_path):
    EmbeddingCache("enc", fingerprint="v1", root=tmp_path).put_images([SHA_A], np.ones((1, 2)))
    assert EmbeddingCache("enc", fingerprint="v2", root=tmp_path).get_images([SHA_A])[1].tolist() == [False]
    assert EmbeddingCache("other", root=tmp_path).get_images([SHA_A])[1].tolist() == [False]


READ_ONLY_WRITER = """
import sys
import numpy as np
from scoring.cache import CacheError, EmbeddingCache
try:
    EmbeddingCache("enc", root=sys.argv[1]).put_images([sys.argv[2]], np.ones((1, 2)))
except CacheError as exc:
    print("CacheError:", exc)
    sys.exit(3)
print("stored")
"""


def test_read_only_cache_folder_is_a_clear_error(tmp_path):
    # In a child process without root's capabilities (tests run as root in CI containers), so the
    # folder's permissions apply.
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        result = subprocess.run(
            unprivileged([sys.executable, "-c", READ_ONLY_WRITER, str(root), SHA_A]),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        root.chmod(0o700)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Cannot write the embedding cache" in result.stdout and str(root) in result.stdout
    assert not any(root.rglob("*.npy"))


def test_mismatched_key_and_row_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="2 keys but 1 rows"):
        EmbeddingCache("enc", root=tmp_path).put_images([SHA_A, SHA_B], np.ones((1, 2)))


def test_cache_path_that_is_not_a_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(CacheError, match="check that the folder is writable"):
        EmbeddingCache("enc", root=blocker).put_texts([SHA_A], np.ones((1, 2)))
