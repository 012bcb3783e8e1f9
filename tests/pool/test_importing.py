from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pool.importing import ImportFailed, pool_import
from pool.inspection import images_inspect
from pool.models import Caption, CaptionStatus, Image, ImageStatus, RunStatus, ShardStatus
from tests.conftest import image_bytes
from tests.pool.conftest import png_bomb, truncated_jpeg, write_images, write_jsonl, write_tar

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
