from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curate.exports import ExportLocationExists, export_create, export_execute, pair_uid
from curate.filtering import FilterRule, filter_run_create, filter_run_execute
from pool.models import Caption
from tests.curate.conftest import ENCODER, VERSION, make_scored_pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def run():
    make_scored_pool(25, images=25)
    run = filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=40))
    return filter_run_execute(run=run)


def _kept(run) -> dict[str, Caption]:
    ids = np.load(run.kept_file).tolist()
    return {
        pair_uid(c.image.sha256, c.text_sha256): c
        for c in Caption.objects.filter(id__in=ids).select_related("image")
    }


def _export(run, kind, out, **kwargs):
    return export_execute(export=export_create(kind=kind, filter_run=run, out=out, **kwargs))


def test_webdataset_shards_read_back_with_the_webdataset_library(run, tmp_path):
    export = _export(run, "webdataset", tmp_path / "wds", shard_size=4)
    kept = _kept(run)
    shards = sorted(str(p) for p in (tmp_path / "wds").glob("*.tar"))
    assert [p.rsplit("/", 1)[1] for p in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert {s["__key__"] for s in samples} == set(kept) and len(samples) == run.kept == 10
    for sample in samples:
        caption = kept[sample["__key__"]]
        assert sample["txt"].decode() == caption.text
        assert sample["jpg"] == caption.image.path.read_bytes()
        meta = json.loads(sample["json"])
        assert meta["caption_id"] == caption.id and meta["reward"] == caption.scores.get().reward
    assert export.manifest["counts"]["shards"] == 3


def test_parquet_export_matches_the_kept_set(run, tmp_path):
    _export(run, "parquet", tmp_path / "pq")
    table = pq.read_table(tmp_path / "pq" / "pairs.parquet").to_pylist()
    kept = _kept(run)
    assert {row["uid"] for row in table} == set(kept) and len(table) == 10
    for row in table:
        caption = kept[row["uid"]]
        assert row["caption"] == caption.text and row["image_file"] == caption.image.file
        assert row["reward"] == caption.scores.get().reward
        assert row["criteria"] == caption.scores.get().criteria  # a struct, as JSONL's object


def test_npy_export_holds_the_sorted_datacomp_uids(run, tmp_path):
    _export(run, "npy", tmp_path / "npy")
    uids = np.load(tmp_path / "npy" / "uids.npy")
    assert uids.dtype == np.dtype("u8,u8")
    as_hex = {f"{int(hi):016x}{int(lo):016x}" for hi, lo in uids.tolist()}
    assert as_hex == set(_kept(run))
    assert uids.tolist() == sorted(uids.tolist())


def test_jsonl_export_and_manifest_checksums(run, tmp_path):
    export = _export(run, "jsonl", tmp_path / "jl")
    lines = (tmp_path / "jl" / "pairs.jsonl").read_text().splitlines()
    assert {json.loads(line)["uid"] for line in lines} == set(_kept(run))
    manifest = json.loads((tmp_path / "jl" / "manifest.json").read_text())
    assert manifest == export.manifest
    assert manifest["filter_run"]["kept"] == 10 and manifest["encoder"] == ENCODER
    (entry,) = manifest["files"]
    assert entry["sha256"] == hashlib.sha256((tmp_path / "jl" / "pairs.jsonl").read_bytes()).hexdigest()
    assert export.done == export.total == 10


def test_an_existing_location_is_refused_unless_overwrite_is_asked(run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportLocationExists, match="already exists"):
        export_create(kind="parquet", filter_run=run, out=out)
    assert (out / "keep.txt").read_text() == "mine"
    _export(run, "parquet", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pairs.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_export_leaves_nothing_behind(run, tmp_path):
    run.kept_file = str(tmp_path / "missing.npy")
    run.save()
    export = export_create(kind="parquet", filter_run=run, out=tmp_path / "target" / "out")
    with pytest.raises(FileNotFoundError):
        export_execute(export=export)
    export.refresh_from_db()
    assert export.status == "failed" and "missing.npy" in export.error
    assert list((tmp_path / "target").iterdir()) == []


def test_parquet_and_jsonl_agree_on_every_value_and_type(run, tmp_path):
    _export(run, "parquet", tmp_path / "pq")
    _export(run, "jsonl", tmp_path / "jl")
    table = pq.read_table(tmp_path / "pq" / "pairs.parquet")
    assert pa.types.is_struct(table.schema.field("criteria").type)
    lines = [json.loads(line) for line in (tmp_path / "jl" / "pairs.jsonl").read_text().splitlines()]
    rows = table.to_pylist()
    # The one documented difference: the source's own columns differ between sources, so Parquet keeps
    # them as JSON text (duckdb's json functions read it) where JSONL has the object.
    for row in rows:
        row["metadata"] = json.loads(row["metadata"])
    assert rows == lines


def test_webdataset_export_writes_the_sizes_open_clip_reads(run, tmp_path):
    from open_clip_train.data import get_dataset_size

    _export(run, "webdataset", tmp_path / "wds", shard_size=4)
    sizes = json.loads((tmp_path / "wds" / "sizes.json").read_text())
    assert sizes == {"00000.tar": 4, "00001.tar": 4, "00002.tar": 2}
    shards = str(tmp_path / "wds" / "{00000..00002}.tar")
    assert get_dataset_size(shards) == (10, 3)


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "webdataset", "npy"])
def test_shipped_files_hold_no_absolute_server_path(run, tmp_path, kind, settings):
    out = tmp_path / kind
    _export(run, kind, out)
    server_paths = [str(settings.MEDIA_ROOT), str(settings.EXPORT_DIR), str(tmp_path)]
    for path in out.iterdir():
        data = path.read_bytes()
        for server_path in server_paths:
            assert server_path.encode() not in data, (path.name, server_path)


def test_a_preference_export_manifest_says_what_the_file_covers(tmp_path, annotator):
    import uuid

    from annotate import services
    from tests.annotate.factories import answer_for, campaign_with_tasks

    campaign = campaign_with_tasks(name="Round 1", images=2, overlap=1)
    for tie in (True, False):
        task = services.task_next(campaign=campaign, user=annotator).task
        ranking, ratings = answer_for(task, tie_first_two=tie)
        services.judgment_submit(
            user=annotator, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    export = export_execute(
        export=export_create(
            kind="preferences", filter_run=None, out=tmp_path / "prefs", campaign_id=campaign.pk
        )
    )
    counts = export.manifest["counts"]
    assert (counts["lines"], counts["pairs"], counts["ties_excluded"], counts["judgments"]) == (11, 11, 1, 2)
    assert "TRL preference dataset" in counts["format"]
    lineage = export.manifest["lineage"]
    assert lineage["campaign"]["name"] == "Round 1" and lineage["judgments"]["count"] == 2
    assert lineage["reward_models_trained_on_this_campaign"] == []
    assert len((tmp_path / "prefs" / "preferences.jsonl").read_text().splitlines()) == 11


# --- pools indexed in place: the source's identity in every export ---


@pytest.fixture
def in_place_run(tmp_path):
    """An img2dataset-style shard indexed in place, scored, and a filter run keeping half of it."""
    from curate.filtering import FilterRule, filter_run_create, filter_run_execute
    from pool.importing import pool_import
    from tests.conftest import image_bytes
    from tests.curate.conftest import make_score
    from tests.pool.conftest import i2d_row, write_i2d_webdataset

    rows = [i2d_row(f"{i:09d}", f"{i:032x}", f"caption {i}", extra=f"tag{i}") for i in range(6)]
    images = {r["key"]: image_bytes(seed=40 + i) for i, r in enumerate(rows)}
    write_i2d_webdataset(tmp_path / "source", "00000", rows, images)
    pool_import(source=str(tmp_path / "source"))
    for caption in Caption.objects.all():
        make_score(caption, reward=float(caption.key), cosine=0.2)
    run = filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=50))
    return filter_run_execute(run=run), images


def test_parquet_and_jsonl_exports_carry_the_source_identity(in_place_run, tmp_path):
    run, _ = in_place_run
    export = _export(run, "parquet", tmp_path / "pq")
    table = pq.read_table(tmp_path / "pq" / "pairs.parquet").to_pylist()
    assert sorted(row["uid"] for row in table) == [f"{i:032x}" for i in (3, 4, 5)]
    row = next(r for r in table if r["key"] == "000000004")
    assert row["uid_source"] == "source" and row["url"] == "http://example.test/000000004.jpg"
    assert (
        json.loads(row["metadata"])["extra"] == "tag4"
        and json.loads(row["metadata"])["original_width"] == 192
    )
    assert row["shard"].endswith("00000.tar") and row["offset"] and row["image_path"] is None
    assert export.manifest["uid_source"] == "source" and export.manifest["uid_counts"] == {"source": 3}
    _export(run, "jsonl", tmp_path / "jl")
    lines = [json.loads(line) for line in (tmp_path / "jl" / "pairs.jsonl").read_text().splitlines()]
    assert {line["key"]: line["metadata"]["extra"] for line in lines} == {
        f"{i:09d}": f"tag{i}" for i in (3, 4, 5)
    }


def test_webdataset_export_reads_bytes_in_place_and_keeps_the_source_key(in_place_run, tmp_path):
    run, images = in_place_run
    export = _export(run, "webdataset", tmp_path / "wds")
    samples = list(
        wds.WebDataset(sorted(str(p) for p in (tmp_path / "wds").glob("*.tar")), shardshuffle=False)
    )
    assert {s["__key__"] for s in samples} == {f"{i:032x}" for i in (3, 4, 5)}
    for sample in samples:
        meta = json.loads(sample["json"])
        assert sample["jpg"] == images[meta["key"]] and meta["uid"] == sample["__key__"]
        assert meta["metadata"]["extra"] == f"tag{int(meta['key'])}"
    assert "source's own key" in export.manifest["keys"]


def test_npy_export_holds_the_source_uids(in_place_run, tmp_path):
    run, _ = in_place_run
    _export(run, "npy", tmp_path / "npy")
    uids = np.load(tmp_path / "npy" / "uids.npy")
    assert [f"{int(hi):016x}{int(lo):016x}" for hi, lo in uids.tolist()] == [f"{i:032x}" for i in (3, 4, 5)]


def test_a_pool_without_source_uids_says_its_uids_are_derived(run, tmp_path):
    export = _export(run, "npy", tmp_path / "npy")
    assert export.manifest["uid_source"] == "derived"


@pytest.mark.postgres
def test_the_copy_npy_writer_equals_the_row_by_row_writer(run, tmp_path):
    """PostgreSQL's binary-COPY uid writer gives the bytes and counts of the per-row writer, with source
    uids, derived uids, uids never stored (derived at export time) and upper-case hex mixed."""
    from collections import Counter

    from curate.exports import _write_npy, _write_npy_copy, pair_batches

    ids = np.load(run.kept_file).tolist()
    Caption.objects.filter(pk=ids[0]).update(uid=None)
    Caption.objects.filter(pk=ids[1]).update(uid="ABCDEF0123456789ABCDEF0123456789", uid_derived=False)
    Caption.objects.filter(pk=ids[2]).update(uid="0" * 32, uid_derived=False)
    Caption.objects.filter(pk__in=ids[3:6]).update(uid_derived=True)  # no uid stored: derived anyway
    rows, fast = Counter(), Counter()
    (tmp_path / "rows").mkdir()
    (tmp_path / "copy").mkdir()
    _write_npy(tmp_path / "rows", pair_batches(filter_run=run), lambda n: None, run.kept, rows)
    _write_npy_copy(tmp_path / "copy", run, lambda n: None, run.kept, fast)
    assert (tmp_path / "rows" / "uids.npy").read_bytes() == (tmp_path / "copy" / "uids.npy").read_bytes()
    assert rows == fast and fast["source"] == 2 and fast["derived"] == run.kept - 2
