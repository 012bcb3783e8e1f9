from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from pool.models import Caption, Image, ImportRun, RunStatus
from tests.pool.conftest import write_tar

pytestmark = pytest.mark.django_db


def run_command(*args) -> str:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue()


def test_import_pool_prints_a_summary_with_skipped_rows(shard, settings):
    settings.LOUPE_IMPORT_MAX_SKIPPED_FRACTION = 0.5
    out = run_command("import_pool", str(shard))
    assert "images imported:           4" in out
    assert "missing_caption: 1" in out
    assert "shard-00000.tar:000000003: 000000003.jpg has no caption" in out
    again = run_command("import_pool", str(shard))
    assert "already present:           4 records" in again
    assert "shards:                    unchanged 1" in again
    assert Image.objects.count() == 4


def test_import_pool_exits_non_zero_when_it_skipped_too_much(shard, settings):
    settings.LOUPE_IMPORT_MAX_SKIPPED_FRACTION = 0.1
    with pytest.raises(CommandError, match=r"finished with problems: 1 of 5 samples skipped \(20%"):
        run_command("import_pool", str(shard))
    assert ImportRun.objects.get().outcome == "finished_with_problems"


def test_import_pool_exits_non_zero_when_nothing_was_imported(tmp_path):
    write_tar(tmp_path / "s.tar", [("a.jpg", b"not a picture"), ("a.txt", b"caption")])
    with pytest.raises(CommandError, match="Nothing was imported: every sample was skipped"):
        run_command("import_pool", str(tmp_path / "s.tar"))
    assert ImportRun.objects.get().status == RunStatus.FAILED


def test_import_pool_missing_column_is_a_one_line_error(tmp_path):
    pq.write_table(pa.table({"image": ["a.jpg"], "alt_txt": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(CommandError) as exc:
        run_command("import_pool", str(tmp_path / "p.parquet"), "--caption-columns", "caption")
    assert "\n" not in str(exc.value) and "columns are: image, alt_txt" in str(exc.value)


def test_import_pool_missing_file_exits_non_zero(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        run_command("import_pool", str(tmp_path / "missing.csv"))


def test_import_pool_column_options(tmp_path):
    from tests.pool.conftest import write_images

    write_images(tmp_path / "pics", 1)
    (tmp_path / "t.csv").write_text(
        "pic,headline,body\npics/img0.jpg,Hello,A longer text\n", encoding="utf-8"
    )
    run_command(
        "import_pool",
        str(tmp_path / "t.csv"),
        "--image-column",
        "pic",
        "--caption-columns",
        "headline,body:human",
    )
    assert dict(Caption.objects.values_list("text", "source")) == {"Hello": "alt", "A longer text": "human"}


def test_clean_pool_prints_counts(shard, settings):
    settings.LOUPE_IMPORT_MAX_SKIPPED_FRACTION = 0.5
    run_command("import_pool", str(shard))
    out = run_command("clean_pool", "--min-side", "90", "--radius", "4")
    assert "images:   low_res 3, unreadable 1" in out
    assert "near-duplicate groups: 0" in out
