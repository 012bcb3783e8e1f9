from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pool.importing import ImportFailed, pool_import
from pool.inspection import images_inspect
from pool.models import Caption, CaptionStatus, Image, ImageStatus, RunStatus, Shard, ShardStatus
from tests.conftest import image_bytes
from tests.pool.conftest import (
    i2d_row,
    png_bomb,
    truncated_jpeg,
    write_i2d_webdataset,
    write_images,
    write_jsonl,
    write_tar,
)

pytestmark = pytest.mark.django_db


def media_files(settings):
    root = settings.MEDIA_ROOT
    return (
        sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        if root.exists()
        else []
    )


def test_import_shard_indexes_in_place_and_copies_nothing(shard, settings):
    run = pool_import(source=str(shard))
    assert run.status == RunStatus.SUCCEEDED
    # The truncated picture's header is fine: indexing keeps it, the first full decode marks it.
    assert Image.objects.count() == 4
    assert Caption.objects.count() == 4
    image = Image.objects.get(source_key="000000001")
    assert (image.width, image.height, image.format) == (96, 80, "JPEG")
    assert image.file == "" and media_files(settings) == []
    with open(shard, "rb") as handle:
        handle.seek(image.offset)
        assert handle.read(image.length) == image_bytes(96, 80, seed=1)
    assert image.shard.uri == str(shard) and image.shard.status == ShardStatus.INDEXED
    assert image.captions.get().text == "a photo number 1"


def test_importing_the_same_shard_twice_adds_nothing_and_reads_nothing(shard, settings):
    first = pool_import(source=str(shard))
    counts = (Image.objects.count(), Caption.objects.count(), media_files(settings))
    second = pool_import(source=str(shard))
    assert (Image.objects.count(), Caption.objects.count(), media_files(settings)) == counts
    assert second.summary["images_imported"] == 0
    assert second.summary["captions_imported"] == 0
    assert second.summary["shards"] == {"unchanged": 1}
    assert second.summary["records"] == 0  # the fingerprint matched: the tar was not read again
    assert second.summary["already_present"] == first.summary["captions_imported"] == 4
    assert second.status == RunStatus.SUCCEEDED


def test_bad_inputs_are_skipped_with_file_row_and_reason_while_the_rest_imports(tmp_path, settings):
    settings.LOUPE_MAX_CAPTION_CHARS = 100
    members = [
        ("good.jpg", image_bytes(seed=1)),
        ("good.txt", b"a good caption"),
        ("trunc.jpg", truncated_jpeg()),
        ("trunc.txt", b"truncated picture"),
        ("text.jpg", b"this is not an image at all"),
        ("text.txt", b"not an image"),
        ("bomb.png", png_bomb()),
        ("bomb.txt", b"a bomb"),
        ("vector.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        ("vector.txt", b"a drawing"),
        ("latin1.jpg", image_bytes(seed=2)),
        ("latin1.txt", b"caf\xe9"),
        ("nocap.jpg", image_bytes(seed=3)),
        ("empty.jpg", image_bytes(seed=4)),
        ("empty.txt", b"   "),
        ("huge.jpg", image_bytes(seed=5)),
        ("huge.txt", b"long " * 1000),
    ]
    run = pool_import(source=str(write_tar(tmp_path / "bad.tar", members)))
    summary = run.summary
    assert run.status == RunStatus.SUCCEEDED
    skips = {s["row"]: (s["file"], s["code"]) for s in summary["skips"]}
    assert skips == {
        "text": ("bad.tar", "not_an_image"),
        "bomb": ("bad.tar", "too_many_pixels"),
        "vector": ("bad.tar", "not_an_image"),
        "latin1": ("bad.tar", "not_utf8"),
        "nocap": ("bad.tar", "missing_caption"),
    }
    assert all(s["reason"] for s in summary["skips"])
    assert set(Image.objects.values_list("source_key", flat=True)) == {"good", "trunc", "empty", "huge"}
    assert Caption.objects.get(image__source_key="empty").status == CaptionStatus.EMPTY
    huge = Caption.objects.get(image__source_key="huge")
    assert huge.status == CaptionStatus.TOO_LONG and len(huge.text) <= 100
    # Only a full decode finds the truncation: the first one marks the image, with the reason.
    images_inspect()
    trunc = Image.objects.get(source_key="trunc")
    assert trunc.status == ImageStatus.UNREADABLE and "truncated" in trunc.status_reason
    assert Image.objects.get(source_key="good").phash
    assert media_files(settings) == []


def test_exact_duplicate_under_another_key_attaches_its_captions(tmp_path):
    same = image_bytes(seed=7)
    shard = write_tar(
        tmp_path / "d.tar",
        [("a.jpg", same), ("a.txt", b"first caption"), ("b.jpg", same), ("b.txt", b"second caption")],
    )
    run = pool_import(source=str(shard))
    assert Image.objects.count() == 1
    assert sorted(Image.objects.get().captions.values_list("text", flat=True)) == [
        "first caption",
        "second caption",
    ]
    assert run.summary["images_duplicate"] == 1
    assert run.summary["images_imported"] == 1


def test_duplicates_across_batches_are_found(tmp_path):
    write_images(tmp_path / "images", 3)
    rows = [{"image": f"images/img{i % 3}.jpg", "caption": f"caption {i}"} for i in range(9)]
    write_jsonl(tmp_path / "m.jsonl", rows)
    run = pool_import(source=str(tmp_path / "m.jsonl"), batch_size=2)
    assert Image.objects.count() == 3
    assert Caption.objects.count() == 9
    assert run.summary["images_imported"] == 3 and run.summary["more_captions"] == 6


def test_manifest_with_per_column_caption_sources(tmp_path):
    write_images(tmp_path / "images", 1)
    write_jsonl(
        tmp_path / "m.jsonl", [{"image": "images/img0.jpg", "title": "Cat", "description": "A cat on a mat"}]
    )
    pool_import(source=str(tmp_path / "m.jsonl"), caption_columns="title:alt,description:human")
    assert dict(Caption.objects.values_list("text", "source")) == {"Cat": "alt", "A cat on a mat": "human"}


def test_parquet_missing_column_fails_the_run_with_the_columns_named(tmp_path):
    pq.write_table(pa.table({"image": ["x.jpg"], "alt_txt": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(ImportFailed, match="columns are: image, alt_txt"):
        pool_import(source=str(tmp_path / "p.parquet"), caption_columns="caption")
    from pool.models import ImportRun

    run = ImportRun.objects.get()
    assert run.status == RunStatus.FAILED and "alt_txt" in run.error
    assert Image.objects.count() == 0


def test_missing_source_fails_cleanly(tmp_path):
    with pytest.raises(ImportFailed, match="no such file or folder"):
        pool_import(source=str(tmp_path / "nope"))


def test_table_path_outside_root_is_skipped_and_the_rest_imports(tmp_path):
    write_images(tmp_path / "outside", 1)
    write_images(tmp_path / "data" / "images", 1, start_seed=5)
    write_jsonl(
        tmp_path / "data" / "m.jsonl",
        [
            {"image": "../outside/img0.jpg", "caption": "escape"},
            {"image": "images/img0.jpg", "caption": "inside"},
        ],
    )
    run = pool_import(source=str(tmp_path / "data" / "m.jsonl"))
    assert list(Caption.objects.values_list("text", flat=True)) == ["inside"]
    assert run.summary["skips"] == [
        {"file": "m.jsonl", "row": 1, "code": "outside_root", "reason": run.summary["skips"][0]["reason"]}
    ]
    assert "outside the import root" in run.summary["skips"][0]["reason"]


def test_csv_paths_outside_the_root_or_missing_are_skipped_and_the_rest_imports(tmp_path):
    write_images(tmp_path / "elsewhere", 1)
    write_images(tmp_path / "table" / "images", 1, start_seed=3)
    (tmp_path / "table" / "link.jpg").symlink_to(tmp_path / "elsewhere" / "img0.jpg")
    (tmp_path / "table" / "pairs.csv").write_text(
        "image,caption\n../elsewhere/img0.jpg,escaped\n/etc/hostname,absolute\nlink.jpg,linked out\n"
        "images/nope.jpg,gone\nimages/img0.jpg,fine\n",
        encoding="utf-8",
    )
    run = pool_import(source=str(tmp_path / "table" / "pairs.csv"))
    assert list(Caption.objects.values_list("text", flat=True)) == ["fine"]
    assert [(s["file"], s["row"], s["code"]) for s in run.summary["skips"]] == [
        ("pairs.csv", 2, "outside_root"),
        ("pairs.csv", 3, "outside_root"),
        ("pairs.csv", 4, "outside_root"),
        ("pairs.csv", 5, "missing_file"),
    ]


def test_progress_is_reported_on_the_run(tmp_path):
    write_images(tmp_path, 5)
    for i in range(5):
        (tmp_path / f"img{i}.txt").write_text(f"caption {i}", encoding="utf-8")
    seen = []
    run = pool_import(
        source=str(tmp_path), batch_size=2, progress=lambda done, total: seen.append((done, total))
    )
    assert seen[-1] == (5, 5)
    assert (run.done, run.total) == (5, 5)
    assert len(seen) >= 3


def test_a_cancelled_import_stops_after_the_current_batch(tmp_path):
    from pool.models import ImportRun

    write_images(tmp_path, 4)
    for i in range(4):
        (tmp_path / f"img{i}.txt").write_text(f"caption {i}", encoding="utf-8")
    run = ImportRun.objects.create(source=str(tmp_path), format="folder")

    def cancel(done, total):
        ImportRun.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLED)

    pool_import(source=str(tmp_path), batch_size=1, run=run, progress=cancel)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.finished_at is not None
    assert Image.objects.count() == 1
    assert run.summary["images_imported"] == 1


# --- in place: shards, identity, honest results ---------------------------------------------------

UID = "0123456789abcdef0123456789abcdef"


def i2d_shard(folder, shard="00000", n=3, start=0, status_of=None):
    rows, images = [], {}
    for i in range(start, start + n):
        key = f"{i:09d}"
        status = (status_of or {}).get(key, "success")
        rows.append(i2d_row(key, f"{i:032x}", f"caption {i}", status=status, extra=f"e{i}"))
        images[key] = image_bytes(seed=100 + i)
    return write_i2d_webdataset(folder, shard, rows, images)


def test_source_uid_key_url_and_metadata_land_on_the_caption(tmp_path):
    i2d_shard(tmp_path)
    run = pool_import(source=str(tmp_path))
    caption = Caption.objects.get(uid=f"{1:032x}")
    assert (caption.key, caption.url, caption.uid_derived) == (
        "000000001",
        "http://example.test/000000001.jpg",
        False,
    )
    assert caption.meta["extra"] == "e1" and caption.meta["original_width"] == 192
    assert caption.image.shard.metadata_uri == str(tmp_path / "00000.parquet")
    assert run.summary["uids"] == {"source": 3}


def test_a_source_without_uids_gets_stable_derived_ones(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.jpg", image_bytes(seed=1)), ("a.txt", b"a caption")])
    run = pool_import(source=str(shard))
    caption = Caption.objects.get()
    assert caption.uid == caption.image.sha256[:16] + caption.text_sha256[:16] and caption.uid_derived
    assert run.summary["uids"] == {"derived": 1}


def test_a_uid_used_twice_is_refused_for_the_second_pair(tmp_path):
    rows = [i2d_row("000000000", UID, "first"), i2d_row("000000001", UID, "second")]
    images = {"000000000": image_bytes(seed=1), "000000001": image_bytes(seed=2)}
    write_i2d_webdataset(tmp_path, "00000", rows, images)
    run = pool_import(source=str(tmp_path))
    assert list(Caption.objects.values_list("text", flat=True)) == ["first"]
    assert [(s["row"], s["code"]) for s in run.summary["skips"]] == [("000000001", "duplicate_uid")]


def test_a_changed_shard_is_reported_and_its_rows_are_not_re_pointed(tmp_path):
    shard = i2d_shard(tmp_path)
    pool_import(source=str(tmp_path))
    before = dict(Image.objects.values_list("pk", "offset"))
    i2d_shard(tmp_path, n=3, start=10)  # the same file names, other samples
    run = pool_import(source=str(tmp_path))
    assert dict(Image.objects.values_list("pk", "offset")) == before
    assert Caption.objects.count() == 3
    shard_row = Shard.objects.get(uri=str(shard))
    assert shard_row.status == ShardStatus.CHANGED and "not re-pointed" in shard_row.status_reason
    assert run.outcome == "finished_with_problems"
    assert run.summary["shard_notes"][0]["status"] == "changed"
    # Reads refuse the new bytes under the old rows.
    from pool.locate import image_read
    from pool.storage import StorageError

    with pytest.raises(StorageError):
        image_read(Image.objects.first())


def test_a_vanished_shard_is_reported_missing(tmp_path):
    i2d_shard(tmp_path, "00000")
    i2d_shard(tmp_path, "00001", start=5)
    pool_import(source=str(tmp_path))
    (tmp_path / "00001.tar").unlink()
    (tmp_path / "00001.parquet").unlink()
    run = pool_import(source=str(tmp_path))
    assert Shard.objects.get(uri=str(tmp_path / "00001.tar")).status == ShardStatus.MISSING
    assert run.summary["shards"] == {"unchanged": 1, "missing": 1}
    assert run.outcome == "finished_with_problems" and "1 shards are missing" in run.problems


def test_a_restored_shard_is_indexed_again_without_reading_it(tmp_path):
    shard = i2d_shard(tmp_path)
    pool_import(source=str(tmp_path))
    saved = shard.read_bytes()
    stat = shard.stat()
    shard.write_bytes(b"broken")
    pool_import(source=str(tmp_path))
    assert Shard.objects.get().status == ShardStatus.CHANGED
    shard.write_bytes(saved)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    run = pool_import(source=str(tmp_path))
    assert Shard.objects.get().status == ShardStatus.INDEXED and run.summary["shards"] == {"unchanged": 1}


def test_an_unreadable_shard_fails_alone_and_the_others_import(tmp_path):
    i2d_shard(tmp_path, "00000")
    (tmp_path / "00001.tar").write_bytes(b"\xff" * 2048)
    run = pool_import(source=str(tmp_path))
    assert Caption.objects.count() == 3
    bad = Shard.objects.get(uri=str(tmp_path / "00001.tar"))
    assert bad.status == ShardStatus.FAILED and "00001.tar is not a readable tar" in bad.status_reason
    assert run.summary["shards"] == {"indexed": 1, "failed": 1}
    assert run.outcome == "finished_with_problems"


def test_an_import_that_imports_nothing_is_failed_with_the_reason(tmp_path):
    (tmp_path / "pairs.parquet").write_bytes(b"not parquet")
    run = pool_import(source=str(tmp_path / "pairs.parquet"))
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("Nothing was imported") and "not a readable Parquet file" in run.error


def test_too_many_skips_finish_with_problems(tmp_path, settings):
    settings.LOUPE_IMPORT_MAX_SKIPPED_FRACTION = 0.25
    i2d_shard(tmp_path, n=4, status_of={"000000001": "failed_to_download", "000000002": "failed_to_download"})
    run = pool_import(source=str(tmp_path))
    assert run.status == RunStatus.SUCCEEDED and run.outcome == "finished_with_problems"
    assert "2 of 4 samples skipped (50%, over the limit of 25%)" in run.problems[0]


def test_images_from_a_parquet_shard_are_read_back_from_their_cell(tmp_path):
    rows = [{**i2d_row(f"{i:09d}", f"{i:032x}", f"c{i}"), "jpg": image_bytes(seed=i)} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "00000.parquet", row_group_size=2)
    pool_import(source=str(tmp_path))
    from pool.locate import image_read

    for image in Image.objects.select_related("shard"):
        caption = image.captions.get()
        assert image_read(image) == image_bytes(seed=int(caption.key))
    assert Shard.objects.get().image_column == "jpg"


def test_s3_shards_index_in_place_and_read_back_by_range(s3_server, tmp_path):
    shard = i2d_shard(tmp_path)
    for name in ("00000.tar", "00000.parquet"):
        s3_server.put_object(Bucket="pools", Key=f"laion/{name}", Body=(tmp_path / name).read_bytes())
    run = pool_import(source="s3://pools/laion")
    assert run.status == RunStatus.SUCCEEDED and run.format == "webdataset"
    assert Caption.objects.count() == 3
    from pool.locate import image_read

    image = Image.objects.select_related("shard").get(captions__uid=f"{2:032x}")
    assert image.shard.uri == "s3://pools/laion/00000.tar"
    assert image_read(image) == image_bytes(seed=102)
    assert shard.exists()
    again = pool_import(source="s3://pools/laion")
    assert again.summary["shards"] == {"unchanged": 1}


def test_an_unreachable_object_store_shard_fails_alone_with_its_reason(s3_server, tmp_path):
    i2d_shard(tmp_path)
    s3_server.put_object(Bucket="pools", Key="p/00000.tar", Body=(tmp_path / "00000.tar").read_bytes())
    run = pool_import(source="s3://pools/p/{00000..00001}.tar")
    assert Caption.objects.count() == 3
    failed = Shard.objects.get(uri="s3://pools/p/00001.tar")
    assert failed.status == ShardStatus.FAILED
    assert "cannot be reached" in failed.status_reason and "s3://pools/p/00001.tar" in failed.status_reason
    assert run.outcome == "finished_with_problems" and "1 shards could not be read" in run.problems


def test_an_object_store_source_that_cannot_be_reached_fails_the_import_clearly(s3_server):
    with pytest.raises(ImportFailed, match="cannot read s3://no-such-bucket/pool"):
        pool_import(source="s3://no-such-bucket/pool")


@pytest.mark.django_db(transaction=True)
def test_shards_indexed_in_parallel_processes_add_up_to_the_same_pool(tmp_path):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("parallel indexing runs on PostgreSQL only (SQLite takes one writer at a time)")
    for n in range(3):
        i2d_shard(tmp_path, f"{n:05d}", n=4, start=10 * n)
    run = pool_import(source=str(tmp_path), processes=2, batch_size=3)
    assert run.status == RunStatus.SUCCEEDED and run.summary["shards"] == {"indexed": 3}
    assert Caption.objects.count() == 12 == run.summary["captions_imported"] == run.done
    assert set(Shard.objects.values_list("samples", flat=True)) == {4}
