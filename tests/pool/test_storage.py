"""The storage layer: local paths, file:// and s3:// (a real S3 endpoint: moto's server on loopback)."""

from __future__ import annotations

import hashlib

import pytest

from pool import storage
from pool.storage import BytesChanged, Locator, StorageError, locator_read, read_range


def test_a_byte_range_of_a_local_file_and_of_a_file_uri(tmp_path):
    path = tmp_path / "shard.bin"
    path.write_bytes(b"0123456789")
    assert read_range(str(path), 3, 4) == b"3456"
    assert read_range(f"file://{path}", 0, 2) == b"01"


def test_a_range_past_the_end_is_an_error_not_short_bytes(tmp_path):
    path = tmp_path / "shard.bin"
    path.write_bytes(b"0123456789")
    with pytest.raises(StorageError, match="changed or was truncated"):
        read_range(str(path), 8, 4)


def test_a_locator_refuses_bytes_that_are_not_the_indexed_ones(tmp_path):
    path = tmp_path / "shard.bin"
    path.write_bytes(b"abcdef")
    good = Locator(uri=str(path), offset=1, length=3, sha256=hashlib.sha256(b"bcd").hexdigest())
    assert locator_read(good) == b"bcd"
    path.write_bytes(b"aXYZef")
    with pytest.raises(BytesChanged, match="sha256 differs"):
        locator_read(good)


def test_stat_gives_size_and_mtime_locally(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    info = storage.stat(str(path))
    assert info.size == 5 and info.mtime and not info.is_dir
    with pytest.raises(StorageError, match="cannot read"):
        storage.stat(str(tmp_path / "missing"))


def test_s3_objects_stat_list_and_read_by_range(s3_server):
    s3_server.put_object(Bucket="pools", Key="laion/00000.tar", Body=b"0123456789")
    s3_server.put_object(Bucket="pools", Key="laion/00001.tar", Body=b"abc")
    info = storage.stat("s3://pools/laion/00000.tar")
    assert info.size == 10 and info.etag
    assert storage.listdir("s3://pools/laion") == [
        ("s3://pools/laion/00000.tar", False),
        ("s3://pools/laion/00001.tar", False),
    ]
    assert read_range("s3://pools/laion/00000.tar", 2, 3) == b"234"
    with storage.open_uri("s3://pools/laion/00001.tar") as handle:
        assert handle.read() == b"abc"


def test_an_unreachable_object_store_is_a_storage_error_with_the_uri(s3_server):
    with pytest.raises(StorageError, match="s3://nobucket/x.tar"):
        storage.stat("s3://nobucket/x.tar")
