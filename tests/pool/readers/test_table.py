"""Parquet (img2dataset's parquet output included), CSV and JSONL tables."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pool.readers import ImportSourceError, Record, Skip, records_read, source_resolve
from tests.conftest import image_bytes
from tests.pool.conftest import i2d_row, write_images, write_jsonl


def read(source, **kwargs):
    items = list(records_read(source_resolve(str(source)), **kwargs))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Skip)]


def i2d_parquet(path, rows, images):
    table = pa.Table.from_pylist([{**row, "jpg": images.get(row["key"])} for row in rows])
    pq.write_table(table, path, row_group_size=2)
    return path


def test_img2dataset_parquet_output_takes_the_jpg_column_not_the_url(tmp_path):
    rows = [i2d_row(f"00000000{i}", f"{i}" * 32, f"caption {i}") for i in range(3)]
    rows.append(i2d_row("000000003", "3" * 32, "gone", status="failed_to_download"))
    images = {row["key"]: image_bytes(seed=i) for i, row in enumerate(rows[:3])}
    i2d_parquet(tmp_path / "00000.parquet", rows, images)
    records, skips = read(tmp_path / "00000.parquet")
    assert [r.uid for r in records] == ["0" * 32, "1" * 32, "2" * 32]
    assert [(r.row_group, r.row_in_group) for r in records] == [(0, 0), (0, 1), (1, 0)]
    assert records[2].data == images["000000002"] and records[2].path is None
    assert records[0].url == "http://example.test/000000000.jpg" and "jpg" not in records[0].meta
    assert [(s.row, s.code) for s in skips] == [(4, "download_failed")]
    assert "HTTP Error 404" in skips[0].reason


def test_a_folder_of_parquet_shards_is_one_source(tmp_path):
    for shard in range(2):
        rows = [
            i2d_row(f"{shard}0000000{i}", f"{shard}{i}".ljust(32, "0"), f"c {shard} {i}") for i in range(2)
        ]
        i2d_parquet(
            tmp_path / f"{shard:05d}.parquet",
            rows,
            {r["key"]: image_bytes(seed=10 * shard + i) for i, r in enumerate(rows)},
        )
    (tmp_path / "00000_stats.json").write_text("{}")
    src = source_resolve(str(tmp_path))
    assert src.format == "parquet" and [u.name for u in src.units] == ["00000.parquet", "00001.parquet"]
    records, skips = read(tmp_path)
    assert len(records) == 4 and skips == []


def test_a_garbage_parquet_file_is_a_clear_reason_not_a_pyarrow_traceback(tmp_path):
    (tmp_path / "pairs.parquet").write_bytes(b"PAR1 but not really a parquet file")
    records, skips = read(tmp_path / "pairs.parquet")
    assert records == [] and [s.code for s in skips] == ["unreadable_shard"]
    assert "pairs.parquet is not a readable Parquet file" in skips[0].reason


def test_a_csv_quote_left_open_is_reported_with_its_line_instead_of_swallowing_rows(table_dir):
    (table_dir / "pairs.csv").write_text(
        'image,caption\nimages/img0.jpg,"fine"\nimages/img1.jpg,"never closed\n'
        "images/img2.jpg,swallowed\nimages/img0.jpg,also swallowed\n",
        encoding="utf-8",
    )
    records, skips = read(table_dir / "pairs.csv")
    assert [r.captions[0].text for r in records] == ["fine"]
    assert [(s.file, s.row, s.code) for s in skips] == [("pairs.csv", 3, "unclosed_quote")]
    assert "line 3" in skips[0].reason and "not imported" in skips[0].reason


def test_a_quoted_multi_line_caption_is_still_one_caption(table_dir):
    (table_dir / "pairs.csv").write_text(
        'image,caption\nimages/img0.jpg,"first line\nsecond line"\n', encoding="utf-8"
    )
    (record,), skips = read(table_dir / "pairs.csv")
    assert skips == [] and record.captions[0].text == "first line\nsecond line"


@pytest.mark.parametrize("value", [42, 1.5, False, {"text": "nested"}])
def test_jsonl_captions_that_are_not_text_are_refused_per_row(table_dir, value):
    write_jsonl(
        table_dir / "m.jsonl",
        [{"image": "images/img0.jpg", "caption": value}, {"image": "images/img1.jpg", "caption": "fine"}],
    )
    records, skips = read(table_dir / "m.jsonl")
    assert [r.captions[0].text for r in records] == ["fine"]
    assert [(s.row, s.code) for s in skips] == [(1, "not_text")]


def test_table_columns_beyond_image_and_caption_are_identity_and_metadata(table_dir):
    write_jsonl(
        table_dir / "m.jsonl",
        [
            {
                "image": "images/img0.jpg",
                "caption": "c",
                "uid": "A" * 32,
                "url": "http://x.test/0",
                "score": 0.7,
            }
        ],
    )
    (record,), _ = read(table_dir / "m.jsonl")
    assert (record.uid, record.url, record.meta) == ("a" * 32, "http://x.test/0", {"score": 0.7})


def test_a_table_with_only_a_url_column_says_urls_are_not_fetched(tmp_path):
    write_images(tmp_path, 1)
    pq.write_table(pa.table({"url": ["http://x.test/a.jpg"], "caption": ["c"]}), tmp_path / "u.parquet")
    with pytest.raises(ImportSourceError, match="url column is not fetched"):
        read(tmp_path / "u.parquet")


def test_duplicate_uid_in_a_table_reaches_the_importer_for_it_to_refuse(table_dir):
    rows = [{"image": f"images/img{i}.jpg", "caption": f"c{i}", "uid": "f" * 32} for i in range(2)]
    write_jsonl(table_dir / "m.jsonl", rows)
    records, _ = read(table_dir / "m.jsonl")
    assert [r.uid for r in records] == ["f" * 32, "f" * 32]
    assert json.dumps([r.key for r in records]) == '["images/img0.jpg", "images/img1.jpg"]'
