from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from curate.models import Export, FilterRun, Flag
from tests.curate.conftest import ENCODER, VERSION, make_scored_pool

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def pool():
    return make_scored_pool(20, images=10)


def test_refresh_flags_command_reports_counts(capsys):
    call_command(
        "refresh_flags",
        "--encoder",
        ENCODER,
        "--reward-model-version",
        str(VERSION),
        "--low-reward-share",
        "0.1",
    )
    assert Flag.objects.filter(reason="low_reward", is_open=True).count() == 2
    assert "low_reward" in capsys.readouterr().out


def test_filter_pool_and_export_dataset_commands(tmp_path, capsys):
    call_command(
        "filter_pool",
        "--encoder",
        ENCODER,
        "--reward-model-version",
        str(VERSION),
        "--top-percent",
        "30",
        "--min",
        "accuracy=1.5",
    )
    run = FilterRun.objects.get()
    assert run.kept == 6 and run.rule["criteria_min"] == {"accuracy": 1.5}
    out = tmp_path / "npy"
    call_command("export_dataset", "--filter-run", str(run.pk), "--kind", "npy", "--out", str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["pairs"] == 6 and Export.objects.get().status == "succeeded"
    with pytest.raises(CommandError, match="already exists"):
        call_command("export_dataset", "--filter-run", str(run.pk), "--kind", "npy", "--out", str(out))
    call_command(
        "export_dataset", "--filter-run", str(run.pk), "--kind", "npy", "--out", str(out), "--overwrite"
    )


def test_filter_pool_preset_and_confirmation():
    call_command(
        "filter_pool",
        "--encoder",
        ENCODER,
        "--reward-model-version",
        str(VERSION),
        "--preset",
        "datacomp-0.25",
    )
    assert FilterRun.objects.get().rule["cosine_min"] == 0.25
    with pytest.raises(CommandError, match="--yes"):
        call_command(
            "filter_pool",
            "--encoder",
            ENCODER,
            "--reward-model-version",
            str(VERSION),
            "--top-percent",
            "100",
        )


def test_filter_pool_top_percent_without_a_reward_model_says_what_to_do_instead(db):
    from tests.curate.conftest import make_caption, make_image, make_score

    for seed in range(4):
        caption = make_caption(make_image(100 + seed), f"clip-only pair {seed}")
        make_score(caption, cosine=0.1 * seed, reward_model_version=0)
    clip_only = ["--encoder", ENCODER, "--reward-model-version", "0"]
    with pytest.raises(CommandError) as raised:
        call_command("filter_pool", *clip_only, "--top-percent", "30", stdout=io.StringIO())
    message = str(raised.value)
    assert "needs a reward model" in message and "CLIPScore only" in message
    assert "--clipscore-min 0.28" in message and "train_reward" in message
    assert not FilterRun.objects.exists()
    # The suggestion works as given.
    call_command("filter_pool", *clip_only, "--clipscore-min", "0.15", stdout=io.StringIO())
    assert FilterRun.objects.get().kept == 2
