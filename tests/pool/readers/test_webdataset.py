"""WebDataset shards with img2dataset's Parquet beside them: offsets, identity, disagreements, damage."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pool.readers import Record, Skip, records_read, source_resolve
from tests.conftest import image_bytes
from tests.pool.conftest import i2d_row, write_i2d_webdataset, write_tar

UID = "0123456789abcdef0123456789abcdef"


def read(source):
    items = list(records_read(source_resolve(str(source))))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Skip)]


def test_records_point_at_each_image_members_bytes_in_the_tar(tmp_path):
    images = {"000000000": image_bytes(seed=1), "000000001": image_bytes(seed=2)}
    shard = write_tar(
        tmp_path / "s.tar",
        [(f"{k}.jpg", v) for k, v in images.items()] + [(f"{k}.txt", b"cap") for k in images],
    )
    records, _ = read(shard)
    data = shard.read_bytes()
    for record in records:
        assert data[record.offset : record.offset + record.length] == images[record.key]


def test_identity_and_metadata_come_from_the_parquet_beside_the_tar(tmp_path):
    rows = [i2d_row("000000000", UID, "a dog\non two lines", extra="x")]
    shard = write_i2d_webdataset(tmp_path, "00000", rows, {"000000000": image_bytes(seed=1)})
    (record,), skips = read(shard)
    assert skips == []
    assert record.uid == UID and record.sample_key == "000000000"
    assert record.url == "http://example.test/000000000.jpg"
    assert record.meta["original_width"] == 192 and record.meta["extra"] == "x"
    assert "status" not in record.meta and "caption" not in record.meta
    # One sample, one caption: line breaks are part of it.
    assert [c.text for c in record.captions] == ["a dog\non two lines"]


def test_failed_downloads_are_reported_with_img2datasets_own_reason(tmp_path):
    rows = [
        i2d_row("000000000", UID, "ok"),
        i2d_row("000000001", "1" * 32, "gone", status="failed_to_download"),
    ]
    shard = write_i2d_webdataset(tmp_path, "00000", rows, {"000000000": image_bytes(seed=1)})
    records, skips = read(shard)
    assert [r.key for r in records] == ["000000000"]
    assert [(s.row, s.code) for s in skips] == [("000000001", "download_failed")]
    assert "failed_to_download: HTTP Error 404: Not Found" in skips[0].reason


def test_a_shard_whose_parquet_and_tar_disagree_reports_each_sample(tmp_path):
    rows = [i2d_row("000000000", UID, "in both"), i2d_row("000000002", "2" * 32, "only in parquet")]
    shard = write_i2d_webdataset(tmp_path, "00000", rows, {"000000000": image_bytes(seed=1)})
    # The tar gains a sample the Parquet does not list.
    with tarfile.open(shard, "a") as tar:
        for name, data in [("000000009.jpg", image_bytes(seed=9)), ("000000009.txt", b"stray")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    records, skips = read(shard)
    assert [r.key for r in records] == ["000000000"]
    assert {(s.row, s.code) for s in skips} == {
        ("000000009", "not_in_metadata"),
        ("000000002", "missing_in_tar"),
    }
    assert all("00000.parquet" in s.reason for s in skips)


def test_multi_dot_member_names_are_one_sample(tmp_path):
    shard = write_tar(
        tmp_path / "s.tar",
        [("k1.input.jpg", image_bytes(seed=1)), ("k1.txt", b"a caption"), ("k1.output.npy", b"\0" * 16)],
    )
    (record,), skips = read(shard)
    assert skips == [] and record.key == "k1" and record.captions[0].text == "a caption"


def test_a_member_over_the_size_limit_is_refused_from_its_header_and_never_read(
    tmp_path, settings, monkeypatch
):
    settings.LOUPE_MAX_IMAGE_BYTES = 1000
    big = image_bytes(400, 300, seed=3)
    assert len(big) > 1000
    shard = write_tar(
        tmp_path / "s.tar",
        [
            ("big.jpg", big),
            ("big.txt", b"large"),
            ("small.jpg", image_bytes(8, 8, seed=1)),
            ("small.txt", b"s"),
        ],
    )
    from pool.readers import webdataset

    reads = []
    original = webdataset.TarScanner.read

    def spy(self, member):
        reads.append((member.name, member.size))
        return original(self, member)

    monkeypatch.setattr(webdataset.TarScanner, "read", spy)
    records, skips = read(shard)
    assert [r.key for r in records] == ["small"]
    assert [(s.row, s.code) for s in skips] == [("big", "image_too_large")]
    assert "refused from its tar header" in skips[0].reason
    assert ("big.jpg", len(big)) not in reads


def test_a_truncated_tar_keeps_what_was_read_and_says_where_it_broke(tmp_path):
    members = []
    for n in range(4):
        members += [(f"k{n}.jpg", image_bytes(seed=n)), (f"k{n}.txt", b"cap")]
    path = write_tar(tmp_path / "s.tar", members)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    records, skips = read(path)
    assert 1 <= len(records) < 4
    assert skips[-1].code == "corrupt_shard" and "truncated" in skips[-1].reason


def test_uids_of_the_wrong_width_are_refused_per_sample(tmp_path):
    rows = [i2d_row("000000000", "abc123", "short uid"), i2d_row("000000001", UID, "good")]
    images = {"000000000": image_bytes(seed=1), "000000001": image_bytes(seed=2)}
    shard = write_i2d_webdataset(tmp_path, "00000", rows, images)
    records, skips = read(shard)
    assert [r.key for r in records] == ["000000001"]
    assert [(s.row, s.code) for s in skips] == [("000000000", "bad_uid")]
    assert "32 hexadecimal digits" in skips[0].reason


def test_a_garbage_parquet_beside_the_tar_is_reported_and_the_tar_still_reads(tmp_path):
    shard = write_tar(
        tmp_path / "00000.tar",
        [
            ("k.jpg", image_bytes(seed=1)),
            ("k.json", json.dumps({"uid": UID, "caption": "from json"}).encode()),
        ],
    )
    (tmp_path / "00000.parquet").write_bytes(b"this is not parquet at all")
    records, skips = read(shard)
    assert [(r.uid, r.captions[0].text) for r in records] == [(UID, "from json")]
    assert skips[0].code == "bad_metadata" and "not a readable Parquet file" in skips[0].reason


def test_the_tar_own_json_gives_identity_when_there_is_no_parquet(tmp_path):
    meta = {"uid": UID.upper(), "key": "k", "url": "http://x.test/k.jpg", "caption": "c", "aesthetic": 5.5}
    shard = write_tar(
        tmp_path / "s.tar", [("k.jpg", image_bytes(seed=1)), ("k.json", json.dumps(meta).encode())]
    )
    (record,), _ = read(shard)
    assert (record.uid, record.url, record.meta) == (UID, "http://x.test/k.jpg", {"aesthetic": 5.5})


@pytest.mark.parametrize("value", [3, 2.5, True, {"a": 1}])
def test_a_json_caption_that_is_not_text_is_refused(tmp_path, value):
    shard = write_tar(
        tmp_path / "s.tar",
        [("k.jpg", image_bytes(seed=1)), ("k.json", json.dumps({"caption": value}).encode())],
    )
    records, skips = read(shard)
    assert records == [] and [s.code for s in skips] == ["not_text"]


def test_parquet_is_matched_by_key_whatever_the_order(tmp_path):
    rows = [i2d_row("000000001", "1" * 32, "one"), i2d_row("000000000", "0" * 32, "zero")]
    images = {"000000000": image_bytes(seed=1), "000000001": image_bytes(seed=2)}
    shard = write_i2d_webdataset(tmp_path, "00000", rows, images)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "00000.parquet")
    records, _ = read(shard)
    assert {r.key: (r.uid, r.captions[0].text) for r in records} == {
        "000000000": ("0" * 32, "zero"),
        "000000001": ("1" * 32, "one"),
    }
