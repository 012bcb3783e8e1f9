"""The DataComp round trip: shards made by the real img2dataset are indexed in place, a filter keeps some
pairs, Loupe exports the subset file, and DataComp's own selection logic, run over the user's SOURCE
shards, selects exactly the kept samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds

from curate.exports import export_create, export_execute
from curate.filtering import FilterRule, filter_run_create, filter_run_execute
from pool.importing import pool_import
from pool.models import Caption, RunStatus
from tests.curate.conftest import ENCODER, VERSION, make_score

pytestmark = [pytest.mark.system, pytest.mark.django_db]

U16 = np.dtype("u8,u8")


def datacomp_select(subset_file, shards: list[str]) -> list[str]:
    """The uids DataComp's resharder keeps, done as mlfoundations/datacomp ``resharder.py`` does it:
    ``load_subset`` opens the file with ``np.load`` (NumPy magic) and asserts dtype ``u8,u8``; for each
    sample, ``copy_worker``'s ``process_example`` reads ``uid`` from the sample's json, turns the hex
    into two uint64 with ``divmod(int(key_str, 16), 2**64)``, and keeps the sample ``count`` times,
    where ``count`` is the width of its ``np.searchsorted`` range (left to right) in the subset."""
    with open(subset_file, "rb") as handle:
        assert handle.read(6) == b"\x93NUMPY"
    subset = np.load(subset_file, mmap_mode="r")
    assert subset.dtype == U16
    kept = []
    for sample in wds.WebDataset(shards, shardshuffle=False):
        if "json" not in sample:
            continue
        key_str = json.loads(sample["json"]).get("uid")
        key_u16 = np.array([divmod(int(key_str, 16), 2**64)], U16)[0]
        a = np.searchsorted(subset, key_u16, "left")
        b = np.searchsorted(subset, key_u16, "right")
        kept += [key_str] * int(b - a)
    return kept


def test_datacomp_selects_exactly_the_kept_samples_from_the_source_shards(tmp_path):
    from tests.pool.conftest import img2dataset_pool

    i2d = img2dataset_pool(tmp_path / "i2d", count=12, formats=("webdataset",))
    source = i2d["out"] / "webdataset"
    run = pool_import(source=str(source))
    assert run.status == RunStatus.SUCCEEDED
    # A reward that keeps some and drops others (the filter's own logic decides which).
    for caption in Caption.objects.all():
        make_score(caption, reward=float(int(caption.uid, 16) % 97), cosine=0.3)
    filter_run = filter_run_execute(
        run=filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=50))
    )
    kept_ids = np.load(filter_run.kept_file).tolist()
    kept_uids = sorted(Caption.objects.filter(id__in=kept_ids).values_list("uid", flat=True))
    assert 0 < len(kept_uids) < Caption.objects.count()

    export = export_execute(export=export_create(kind="npy", filter_run=filter_run, out=tmp_path / "subset"))
    assert export.manifest["uid_source"] == "source"

    shards = sorted(str(p) for p in source.glob("*.tar"))
    selected = datacomp_select(tmp_path / "subset" / "uids.npy", shards)
    assert sorted(selected) == kept_uids
