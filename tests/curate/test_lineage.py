"""Scores, filter runs and exports are keyed by the encoder's weights, not its name: weights replaced at
the same path and rescored never change what an older filter run exports."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from curate.exports import export_create, export_execute
from curate.filtering import FilterRule, filter_run_create, filter_run_execute
from scoring.encoders import encoder_cache_clear
from scoring.inference import scoring_run_sync
from scoring.models import Score
from scoring.services import scoring_run_start
from tests.scoring.conftest import make_pool
from tests.scoring.tiny_clip import TINY_ARCH, tiny_clip_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def weights(tmp_path):
    """A weights file of our own (the session's tiny model is shared) and a second set of weights."""
    folder = tmp_path / "weights"
    first = tiny_clip_files(folder, seed=0)
    second = tiny_clip_files(tmp_path / "other", seed=1)
    path = folder / "encoder.pt"
    shutil.copyfile(first, path)
    yield path, second
    encoder_cache_clear()


def _score(encoder: str):
    return scoring_run_sync(run=scoring_run_start(encoder=encoder, reward_model_version=0, enqueue=False))


def _replace(path, new_weights) -> None:
    """What a user does: copy the new file over the old one, in place."""
    shutil.copyfile(new_weights, path)
    # A worker started after the replacement: nothing of the old weights stays in this process.
    encoder_cache_clear()


def test_an_old_filter_runs_export_keeps_its_scores_after_the_weights_are_replaced_and_rescored(
    weights, tmp_path
):
    path, new_weights = weights
    encoder = f"open_clip:{TINY_ARCH}:{path}"
    captions = make_pool(6, captions_per_image=2)
    _score(encoder)
    before = dict(Score.objects.values_list("caption_id", "cosine"))
    median = float(np.median(list(before.values())))
    run = filter_run_execute(
        run=filter_run_create(
            encoder=encoder, reward_model_version=0, rule=FilterRule(top_percent=None, cosine_min=median)
        )
    )
    kept_before = {cid for cid, cos in before.items() if cos >= median}

    _replace(path, new_weights)
    _score(encoder)

    export = export_execute(export=export_create(kind="jsonl", filter_run=run, out=tmp_path / "old"))
    rows = [json.loads(line) for line in (tmp_path / "old" / "pairs.jsonl").read_text().splitlines()]
    assert {row["caption_id"] for row in rows} == kept_before
    assert {row["caption_id"]: row["cosine"] for row in rows} == {cid: before[cid] for cid in kept_before}
    # Both scorings are kept, one row per caption and weights.
    assert Score.objects.count() == 2 * len(captions)
    models = export.manifest["models"]
    assert models["encoder_fingerprint"] == run.encoder_fingerprint != ""
    assert models["reward_model"] is None  # CLIPScore only
    # The weights are named by file name and fingerprint: the server's folders stay on the server.
    assert models["encoder"] == f"open_clip:{TINY_ARCH}:encoder.pt"
    assert str(tmp_path) not in json.dumps(export.manifest)


def test_a_new_filter_run_reads_the_rescored_weights(weights):
    path, new_weights = weights
    encoder = f"open_clip:{TINY_ARCH}:{path}"
    make_pool(4, captions_per_image=2)
    first = _score(encoder)
    _replace(path, new_weights)
    second = _score(encoder)
    assert first.encoder_fingerprint != second.encoder_fingerprint
    run = filter_run_create(
        encoder=encoder,
        reward_model_version=0,
        rule=FilterRule(top_percent=None, cosine_min=-1),
        confirm=True,
    )
    assert run.encoder_fingerprint == second.encoder_fingerprint


def test_a_scoring_run_refuses_weights_replaced_after_it_started(weights):
    path, new_weights = weights
    encoder = f"open_clip:{TINY_ARCH}:{path}"
    make_pool(2)
    run = scoring_run_start(encoder=encoder, reward_model_version=0, enqueue=False)
    _replace(path, new_weights)
    run = scoring_run_sync(run=run)
    assert run.status == "failed"
    assert "changed after scoring run" in run.error and "Start a new scoring run" in run.error
    assert not Score.objects.exists()


def test_the_fingerprint_follows_the_bytes_not_the_file_times(weights):
    from scoring.encoder_names import encoder_fingerprint

    path, new_weights = weights
    encoder = f"open_clip:{TINY_ARCH}:{path}"
    original = encoder_fingerprint(encoder)
    stat = path.stat()
    _replace(path, new_weights)
    # rsync -t / cp -p keep the old file times: the fingerprint must still change.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert encoder_fingerprint(encoder) != original
    shutil.copyfile(tiny_clip_files(path.parent, seed=0), path)
    assert encoder_fingerprint(encoder) == original


def test_the_manifest_names_the_reward_model_and_the_judgments_behind_it(tmp_path):
    from annotate.models import Campaign
    from tests.curate.conftest import ENCODER, VERSION, make_scored_pool
    from training.models import RewardModel

    campaign = Campaign.objects.create(name="round 1")
    judgments = {"count": 120, "pairs": 720, "last_judgment_id": 987, "sha256": "ab" * 32}
    RewardModel.objects.create(
        version=VERSION,
        encoder=ENCODER,
        encoder_fingerprint="",
        campaign=campaign,
        checkpoint="/models/reward-v1.pt",
        checkpoint_sha256="cd" * 32,
        config={"judgments": judgments},
        n_judgments=120,
    )
    make_scored_pool(10)
    run = filter_run_execute(
        run=filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=50))
    )
    export = export_execute(export=export_create(kind="parquet", filter_run=run, out=tmp_path / "pq"))
    model = export.manifest["models"]["reward_model"]
    assert model["campaign"] == {"id": campaign.pk, "name": "round 1"}
    assert model["judgments"] == judgments and model["checkpoint_sha256"] == "cd" * 32
    assert json.loads((tmp_path / "pq" / "manifest.json").read_text())["models"]["reward_model"] == model
