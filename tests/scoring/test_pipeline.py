"""Batched image embedding from files: worker processes give the same result as in-process decoding."""

from __future__ import annotations

import numpy as np

from scoring.encoders import encoder_load
from scoring.pipeline import images_embed
from tests.conftest import image_bytes


def test_loader_workers_match_in_process_decoding_and_report_bad_files(tiny_clip_name, tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(image_bytes(64, 48, seed=i))
        paths.append(str(path))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff nope")
    paths.insert(2, str(broken))
    encoder = encoder_load(tiny_clip_name)
    in_process, errors_a = images_embed(encoder, paths, batch_size=4, num_workers=0)
    in_workers, errors_b = images_embed(encoder, paths, batch_size=4, num_workers=2)
    np.testing.assert_allclose(in_process, in_workers, atol=1e-5)
    assert list(errors_a) == list(errors_b) == [2]
    assert "cannot read image" in errors_a[2] and str(broken) in errors_a[2]
    assert not in_process[2].any() and in_process[[0, 1, 3, 4, 5]].any(axis=1).all()


def test_images_in_a_shard_embed_by_offset_like_the_same_files(tiny_clip_name, tmp_path):
    import hashlib

    from pool.storage import Locator
    from tests.pool.conftest import write_tar

    datas = [image_bytes(64, 48, seed=i) for i in range(4)]
    paths = []
    for i, data in enumerate(datas):
        (tmp_path / f"{i}.jpg").write_bytes(data)
        paths.append(str(tmp_path / f"{i}.jpg"))
    shard = write_tar(tmp_path / "s.tar", [(f"{i}.jpg", d) for i, d in enumerate(datas)])
    raw = shard.read_bytes()
    locators = [
        Locator(uri=str(shard), offset=raw.index(d), length=len(d), sha256=hashlib.sha256(d).hexdigest())
        for d in datas
    ]
    changed = Locator(uri=str(shard), offset=locators[0].offset, length=len(datas[0]), sha256="0" * 64)
    encoder = encoder_load(tiny_clip_name)
    by_path, _ = images_embed(encoder, paths, batch_size=2, num_workers=0)
    # Worker processes get the picklable locators and read the shard themselves.
    by_offset, errors = images_embed(encoder, locators + [changed], batch_size=2, num_workers=2)
    np.testing.assert_allclose(by_offset[:4], by_path, atol=1e-5)
    assert list(errors) == [4] and "sha256 differs" in errors[4]
