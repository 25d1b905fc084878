"""The demo runs every stage end to end (shortened), and its packaged settings are configs/demo.yaml."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from tests.helpers import TINY_SETS
from typer.testing import CliRunner

from personsearch.cli.app import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_packaged_demo_settings_are_the_shipped_config():
    packaged = REPO / "src" / "personsearch" / "demo.yaml"
    assert packaged.read_text() == (REPO / "configs" / "demo.yaml").read_text()
    from personsearch.demo import demo_settings

    settings = demo_settings()
    assert settings.model.pretrained is None and settings.masking.strategy == "attention"


def test_short_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--ids", "12", "--minutes", "0.2", "--workers", "0", "--json",
            "--set", "train.max_steps=4", "--set", "train.epochs=1"]
    for item in TINY_SETS:
        if not item.startswith(("train.epochs", "data.workers")):
            args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary) >= {"run", "index", "sheet", "data", "metrics", "seconds"}
    assert set(summary["metrics"]) >= {"R1", "R5", "R10", "mAP", "mINP"}
    assert (Path(summary["index"]) / "header.json").is_file()
    with Image.open(summary["sheet"]) as sheet:
        assert sheet.format == "PNG" and sheet.width > 100
    assert (Path(summary["run"]) / "checkpoints" / "best.safetensors").is_file()

    # The next commands the demo suggests work on what it left behind.
    query = runner.invoke(app, ["query", "a man in a black jacket", "--index", summary["index"], "--json", "-k", "3"])
    assert query.exit_code == 0, query.output
    assert len(json.loads(query.stdout)["results"]) == 3


def test_demo_rejects_bad_options(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--masking", "magic"])
    assert result.exit_code == 2 and "masking" in result.output
