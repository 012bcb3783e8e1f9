from __future__ import annotations

import csv
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from pool.readers import (
    ImportSourceError,
    Record,
    Skip,
    caption_columns_parse,
    caption_prepare,
    records_estimate,
    records_read,
    source_resolve,
)
from tests.conftest import image_bytes
from tests.pool.conftest import write_images, write_jsonl, write_tar


def read_all(source, **kwargs):
    src = source_resolve(str(source), format=kwargs.pop("format", None), root=kwargs.pop("root", None))
    items = list(records_read(src, **kwargs))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Skip)]


# --- captions ---


def test_caption_is_stripped():
    assert caption_prepare("  a dog on a beach \n", source="alt").text == "a dog on a beach"


def test_empty_caption_is_kept_and_marked():
    caption = caption_prepare("   ", source="alt")
    assert (caption.text, caption.status) == ("", "empty")


def test_huge_caption_is_capped_and_marked(settings):
    settings.LOUPE_MAX_CAPTION_CHARS = 50
    caption = caption_prepare("word " * 100, source="alt")
    assert caption.status == "too_long"
    assert len(caption.text) <= 50
    assert "499" in caption.reason


def test_non_utf8_caption_bytes_are_refused():
    with pytest.raises(Exception) as exc:
        caption_prepare(b"caf\xe9", source="alt")
    assert exc.value.code == "not_utf8"


def test_caption_columns_carry_their_source():
    assert caption_columns_parse("title:alt, description:human,keywords", default_source="synthetic") == [
        ("title", "alt"),
        ("description", "human"),
        ("keywords", "synthetic"),
    ]


def test_caption_columns_refuse_an_unknown_source():
    with pytest.raises(ImportSourceError, match="unknown caption source 'robot'"):
        caption_columns_parse("title:robot")


# --- folder ---


def test_folder_txt_is_one_caption_and_json_may_give_several(tmp_path):
    write_images(tmp_path, 2)
    (tmp_path / "img0.txt").write_text("a red square\n\non a second line\n", encoding="utf-8")
    (tmp_path / "img1.json").write_text(
        json.dumps({"captions": ["one", "two"], "text": "three"}), encoding="utf-8"
    )
    records, skips = read_all(tmp_path)
    assert skips == []
    by_key = {r.key: [c.text for c in r.captions] for r in records}
    assert by_key == {"img0.jpg": ["a red square\n\non a second line"], "img1.jpg": ["one", "two", "three"]}


def test_folder_reports_images_without_captions_and_orphan_and_non_image_files(tmp_path):
    write_images(tmp_path, 1)
    (tmp_path / "lonely.txt").write_text("no picture for me", encoding="utf-8")
    (tmp_path / "drawing.svg").write_text("<svg/>", encoding="utf-8")
    records, skips = read_all(tmp_path)
    assert records == []
    reasons = {s.file: s.code for s in skips}
    assert reasons == {
        "img0.jpg": "missing_caption",
        "lonely.txt": "orphan_caption",
        "drawing.svg": "not_an_image",
    }


def test_folder_non_utf8_sidecar_is_skipped_with_reason(tmp_path):
    write_images(tmp_path, 1)
    (tmp_path / "img0.txt").write_bytes(b"caf\xe9 au lait")
    records, skips = read_all(tmp_path)
    assert records == []
    assert skips[0].code == "not_utf8" and skips[0].file == "img0.jpg"
    assert "UTF-8" in skips[0].reason


def test_folder_symlink_outside_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    write_images(outside, 1)
    folder = tmp_path / "pool"
    folder.mkdir()
    (folder / "link.jpg").symlink_to(outside / "img0.jpg")
    (folder / "link.txt").write_text("sneaky", encoding="utf-8")
    records, skips = read_all(folder)
    assert records == []
    assert skips[0].code == "outside_root"


# --- tables ---


def test_csv_autodetects_columns_and_resolves_relative_paths(table_dir):
    with open(table_dir / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "caption", "other"])
        writer.writerow(["images/img0.jpg", "first", "x"])
        writer.writerow(["images/img1.jpg", "second", "y"])
    records, skips = read_all(table_dir / "pairs.csv")
    assert skips == []
    assert [(os.path.basename(r.path), r.captions[0].text, r.row) for r in records] == [
        ("img0.jpg", "first", 2),
        ("img1.jpg", "second", 3),
    ]


def test_csv_rows_carry_the_import_root_for_the_loader_to_enforce(table_dir):
    (table_dir / "pairs.csv").write_text("image,caption\n../elsewhere/img0.jpg,escaped\n", encoding="utf-8")
    records, _ = read_all(table_dir / "pairs.csv")
    assert records[0].root == table_dir.resolve()
    assert str(records[0].path) == f"{table_dir.resolve()}/../elsewhere/img0.jpg"


def test_csv_non_utf8_caption_skips_only_that_row(table_dir):
    (table_dir / "pairs.csv").write_bytes(b"image,caption\nimages/img0.jpg,caf\xe9\nimages/img1.jpg,fine\n")
    records, skips = read_all(table_dir / "pairs.csv")
    assert [r.captions[0].text for r in records] == ["fine"]
    assert (skips[0].file, skips[0].row, skips[0].code) == ("pairs.csv", 2, "not_utf8")


def test_csv_url_is_skipped(table_dir):
    (table_dir / "pairs.csv").write_text("url,caption\nhttps://example.com/a.jpg,remote\n", encoding="utf-8")
    _, skips = read_all(table_dir / "pairs.csv", image_column="url")
    assert [(s.row, s.code) for s in skips] == [(2, "remote_url")]


def test_a_url_column_is_never_taken_for_the_image(table_dir):
    (table_dir / "pairs.csv").write_text("url,caption\nhttps://example.com/a.jpg,remote\n", encoding="utf-8")
    with pytest.raises(ImportSourceError, match="a url column is not fetched"):
        read_all(table_dir / "pairs.csv")


def test_csv_missing_column_is_a_clear_error(table_dir):
    (table_dir / "pairs.csv").write_text("image,caption\nimages/img0.jpg,x\n", encoding="utf-8")
    with pytest.raises(ImportSourceError, match=r"no caption column 'title'; columns are: image, caption"):
        read_all(table_dir / "pairs.csv", caption_columns="title")


def test_jsonl_several_caption_columns_with_their_sources(table_dir):
    write_jsonl(
        table_dir / "manifest.jsonl",
        [
            {
                "image": "images/img0.jpg",
                "title": "Cat",
                "description": "A cat asleep on a sofa",
                "keywords": ["cat", "sofa"],
            }
        ],
    )
    records, _ = read_all(
        table_dir / "manifest.jsonl", caption_columns="title:alt,description:human,keywords:synthetic"
    )
    assert [(c.text, c.source) for c in records[0].captions] == [
        ("Cat", "alt"),
        ("A cat asleep on a sofa", "human"),
        ("cat", "synthetic"),
        ("sofa", "synthetic"),
    ]


def test_jsonl_bad_lines_are_skipped_with_line_numbers(table_dir):
    (table_dir / "m.jsonl").write_bytes(
        b'{"image": "images/img0.jpg", "caption": "ok"}\n'
        b"not json\n"
        b'{"image": "images/img1.jpg", "caption": "caf\xe9"}\n'
        b'{"caption": "no image"}\n'
        b'{"image": "images/img2.jpg"}\n'
    )
    records, skips = read_all(table_dir / "m.jsonl")
    assert len(records) == 1
    assert [(s.row, s.code) for s in skips] == [
        (2, "bad_row"),
        (3, "not_utf8"),
        (4, "missing_image"),
        (5, "missing_caption"),
    ]


def test_parquet_reads_in_batches_and_counts_rows(table_dir):
    rows = 5000
    table = pa.table({"image": ["images/img0.jpg"] * rows, "text": [f"caption {i}" for i in range(rows)]})
    pq.write_table(table, table_dir / "pairs.parquet", row_group_size=1000)
    src = source_resolve(str(table_dir / "pairs.parquet"))
    assert records_estimate(src) == rows
    records = list(records_read(src))
    assert len(records) == rows
    assert records[-1].captions[0].text == "caption 4999" and records[-1].row == rows


def test_parquet_missing_column_names_the_columns_that_exist(table_dir):
    pq.write_table(pa.table({"image": ["images/img0.jpg"], "alt_txt": ["x"]}), table_dir / "p.parquet")
    with pytest.raises(ImportSourceError) as exc:
        read_all(table_dir / "p.parquet", caption_columns="caption")
    assert "no caption column 'caption'" in str(exc.value)
    assert "columns are: image, alt_txt" in str(exc.value)


def test_parquet_with_embedded_image_bytes(tmp_path):
    data = image_bytes(seed=9)
    pq.write_table(pa.table({"image": [data], "caption": ["embedded"]}), tmp_path / "e.parquet")
    records, _ = read_all(tmp_path / "e.parquet")
    assert records[0].data == data and records[0].path is None


# --- WebDataset ---


def test_webdataset_groups_members_by_key(shard):
    records, skips = read_all(shard)
    assert [r.key for r in records] == ["000000000", "000000001", "000000002", "000000004"]
    assert records[0].captions[0].text == "a photo number 0"
    assert [(s.row, s.code) for s in skips] == [("000000003", "missing_caption")]


def test_webdataset_caption_from_json_when_txt_is_missing(tmp_path):
    path = write_tar(
        tmp_path / "s.tar",
        [("a/k1.jpg", image_bytes(seed=1)), ("a/k1.json", json.dumps({"caption": "from json"}).encode())],
    )
    records, _ = read_all(path)
    assert (records[0].key, records[0].captions[0].text) == ("a/k1", "from json")


def test_webdataset_directory_and_brace_pattern(tmp_path):
    for n in range(3):
        write_tar(tmp_path / f"{n:05d}.tar", [(f"k{n}.jpg", image_bytes(seed=n)), (f"k{n}.txt", b"cap")])
    assert source_resolve(str(tmp_path)).format == "webdataset"
    pq.write_table(
        pa.table({"key": ["k0", "x"], "status": ["success", "failed_to_download"]}),
        tmp_path / "00000.parquet",
    )
    src = source_resolve(str(tmp_path / "{00000..00001}.tar"))
    assert [p.name for p in src.paths] == ["00000.tar", "00001.tar"]
    assert [u.metadata_uri for u in src.units] == [str(tmp_path / "00000.parquet"), ""]
    # The metadata's row count (its footer); a tar without metadata is not scanned twice just to count.
    assert records_estimate(src) == 2


def test_webdataset_truncated_shard_keeps_what_was_read(tmp_path):
    members = []
    for n in range(4):
        members += [(f"k{n}.jpg", image_bytes(seed=n)), (f"k{n}.txt", b"cap")]
    path = write_tar(tmp_path / "s.tar", members)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    records, skips = read_all(path)
    assert 1 <= len(records) < 4
    assert skips[-1].code == "corrupt_shard"


def test_source_outside_import_roots_is_refused(settings, tmp_path):
    settings.LOUPE_IMPORT_ROOTS = [str(tmp_path / "allowed")]
    (tmp_path / "allowed").mkdir()
    write_images(tmp_path / "other", 1)
    with pytest.raises(ImportSourceError, match="outside the allowed import roots"):
        source_resolve(str(tmp_path / "other"))


def test_unknown_extension_asks_for_a_format(tmp_path):
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(ImportSourceError, match="--format"):
        source_resolve(str(tmp_path / "x.xlsx"))


# --- property: arbitrary caption bytes/text never crash the table readers ---

caption_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
caption_bytes = st.binary(max_size=300)


@hyp_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(captions=st.lists(st.one_of(caption_text, caption_bytes), min_size=1, max_size=5))
def test_jsonl_reader_never_crashes_on_random_captions(tmp_path_factory, captions):
    folder = tmp_path_factory.mktemp("hyp")
    write_images(folder, 1)
    lines = []
    for item in captions:
        if isinstance(item, bytes):
            # Raw bytes spliced into the line: may be invalid UTF-8 or invalid JSON.
            lines.append(b'{"image": "img0.jpg", "caption": "' + item.replace(b"\n", b" ") + b'"}')
        else:
            lines.append(json.dumps({"image": "img0.jpg", "caption": item}).encode())
    (folder / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    src = source_resolve(str(folder / "m.jsonl"), format="jsonl")
    try:
        items = list(records_read(src, image_column="image", caption_columns="caption"))
    except ImportSourceError:
        return  # the first line fixes the columns; a first line without them is a clear error
    assert all(isinstance(i, Record | Skip) for i in items)
    for item in items:
        if isinstance(item, Record):
            for caption in item.captions:
                caption.text.encode("utf-8")
                assert caption.status in {"ok", "empty", "too_long"}


@hyp_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=st.lists(st.binary(max_size=200).filter(lambda b: b"\x00" not in b), min_size=1, max_size=5))
def test_csv_reader_never_crashes_on_random_bytes(tmp_path_factory, cells):
    folder = tmp_path_factory.mktemp("hyp")
    write_images(folder, 1)
    body = b"".join(b"img0.jpg," + cell + b"\n" for cell in cells)
    (folder / "t.csv").write_bytes(b"image,caption\n" + body)
    items = list(records_read(source_resolve(str(folder / "t.csv"))))
    assert all(isinstance(i, Record | Skip) for i in items)
    for skip in (i for i in items if isinstance(i, Skip)):
        assert skip.file == "t.csv" and skip.reason and isinstance(skip.row, int)
