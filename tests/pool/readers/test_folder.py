"""Folders with caption sidecars, and img2dataset's files output."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from pool.readers import Record, Skip, records_read, source_resolve
from tests.conftest import image_bytes
from tests.pool.conftest import i2d_row, write_images


def read(source, **kwargs):
    items = list(records_read(source_resolve(str(source), **kwargs)))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Skip)]


def test_a_caption_sidecar_linking_outside_the_import_root_is_refused_unread(tmp_path):
    folder = tmp_path / "pool"
    write_images(folder, 2)
    (folder / "img0.txt").symlink_to("/proc/self/environ")
    (folder / "img1.txt").write_text("fine", encoding="utf-8")
    records, skips = read(folder)
    assert [r.key for r in records] == ["img1.jpg"]
    assert [(s.file, s.code) for s in skips] == [("img0.jpg", "outside_root")]
    assert "links outside the import root" in skips[0].reason


def test_a_json_sidecar_linking_outside_the_root_is_refused_too(tmp_path):
    folder = tmp_path / "pool"
    write_images(folder, 1)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"caption": "leaked"}), encoding="utf-8")
    (folder / "img0.json").symlink_to(secret)
    records, skips = read(folder)
    assert records == [] and skips[0].code == "outside_root"


def test_a_huge_sidecar_is_refused_from_its_size(tmp_path):
    write_images(tmp_path, 1)
    with open(tmp_path / "img0.txt", "wb") as handle:
        handle.truncate(5 << 20)
    records, skips = read(tmp_path)
    assert records == [] and skips[0].code == "sidecar_too_large"


def test_the_image_is_recorded_where_it_is(tmp_path):
    write_images(tmp_path, 1)
    (tmp_path / "img0.txt").write_text("c", encoding="utf-8")
    (record,), _ = read(tmp_path)
    assert record.path == str((tmp_path / "img0.jpg").resolve()) and record.data is None


def write_i2d_files(folder, shard, rows, images):
    """img2dataset's files output: ``shard/`` with key.jpg, key.txt, key.json; ``shard.parquet``."""
    (folder / shard).mkdir(parents=True)
    for row in rows:
        if row["status"] == "success":
            key = row["key"]
            (folder / shard / f"{key}.jpg").write_bytes(images[key])
            (folder / shard / f"{key}.txt").write_text(row["caption"], encoding="utf-8")
            (folder / shard / f"{key}.json").write_text(json.dumps(row), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard}.parquet")
    (folder / f"{shard}_stats.json").write_text("{}", encoding="utf-8")


def test_img2dataset_files_output_imports_as_it_is(tmp_path):
    rows = [
        i2d_row("000000000", "0" * 32, "first line\nsecond line"),
        i2d_row("000000001", "1" * 32, "x", status="failed_to_download"),
        i2d_row("000000002", "2" * 32, "two"),
    ]
    write_i2d_files(
        tmp_path, "00000", rows, {"000000000": image_bytes(seed=1), "000000002": image_bytes(seed=2)}
    )
    src = source_resolve(str(tmp_path))
    assert src.format == "files" and [u.metadata_uri for u in src.units] == [str(tmp_path / "00000.parquet")]
    records, skips = read(tmp_path)
    assert [(r.uid, [c.text for c in r.captions]) for r in records] == [
        ("0" * 32, ["first line\nsecond line"]),
        ("2" * 32, ["two"]),
    ]
    assert records[0].path == os.path.realpath(tmp_path / "00000" / "000000000.jpg")
    assert [(s.row, s.code) for s in skips] == [("000000001", "download_failed")]


def test_files_output_image_missing_from_its_folder_is_reported(tmp_path):
    rows = [i2d_row("000000000", "0" * 32, "c")]
    write_i2d_files(tmp_path, "00000", rows, {"000000000": image_bytes(seed=1)})
    (tmp_path / "00000" / "000000000.jpg").unlink()
    records, skips = read(tmp_path)
    assert records == [] and [s.code for s in skips] == ["missing_in_folder"]
