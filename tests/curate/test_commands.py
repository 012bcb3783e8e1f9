from __future__ import annotations

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
