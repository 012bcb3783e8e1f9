from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from pool.models import Caption, Image

pytestmark = pytest.mark.django_db


def run_command(*args) -> str:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue()


def test_import_pool_prints_a_summary_with_skipped_rows(shard):
    out = run_command("import_pool", str(shard))
    assert "images imported:           3" in out
    assert "missing_caption: 1" in out
    assert "shard-00000.tar:000000003: 000000003.jpg has no caption" in out
    again = run_command("import_pool", str(shard))
    assert "already present:           3 records" in again
    assert Image.objects.count() == 3


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


def test_clean_pool_prints_counts(shard):
    run_command("import_pool", str(shard))
    out = run_command("clean_pool", "--min-side", "90", "--radius", "4")
    assert "images:   low_res 3" in out
    assert "near-duplicate groups: 0" in out
