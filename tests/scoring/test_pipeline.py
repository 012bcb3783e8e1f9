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
