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

    # The demo's question has a right answer in the test gallery, and it says how many hits have it.
    from personsearch.data.prepared import PreparedDataset
    from personsearch.data.synthetic import load_attributes, matches, parse_query

    prepared = PreparedDataset.load(summary["data"])
    attributes = load_attributes(prepared.raw_root)
    named = parse_query(summary["query"])
    assert named == summary["named_attributes"] and {"gender", "upper_type", "upper_color"} <= named.keys()
    assert any(matches(named, attributes.get(entry.path)) for entry in prepared.entries("test"))
    assert isinstance(summary["matching_hits"], int) and 0 <= summary["matching_hits"] <= 10
    holders = sum(matches(named, attributes.get(entry.path)) for entry in prepared.entries("test"))
    assert summary["gallery_holders"] == holders  # the most the top 10 could match
    for text in summary["suggestions"]:  # the next queries it suggests have right answers too
        assert any(matches(parse_query(text), attributes.get(entry.path)) for entry in prepared.entries("test"))

    # The next commands the demo suggests work on what it left behind.
    query = runner.invoke(app, ["query", "a man in a black jacket", "--index", summary["index"], "--json", "-k", "3"])
    assert query.exit_code == 0, query.output
    assert len(json.loads(query.stdout)["results"]) == 3


def test_demo_rejects_bad_options(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--masking", "magic"])
    assert result.exit_code == 2 and "masking" in result.output


def test_the_demo_says_when_the_time_budget_cut_training_short(tmp_path, capsys):
    from personsearch.cli.demo import _render
    from personsearch.demo import DemoResult, DemoRun

    run = DemoRun("attention", tmp_path / "run", {"R1": 40.0, "mAP": 41.0}, 900, 6, 510.0, "max_minutes")
    result = DemoResult(tmp_path, tmp_path / "data", [run], tmp_path / "run" / "index", tmp_path / "query.png",
                        "a woman in a red coat",
                        [{"rank": r, "score": 0.5, "path": f"imgs/{r}.jpg", "pid": r} for r in range(1, 11)], 520.0,
                        matching=4, holders=7,
                        named={"gender": "female", "upper_color": "red", "upper_type": "coat"},
                        suggestions=["a man in a blue jacket"])
    _render(result)
    shown = capsys.readouterr()
    text = " ".join((shown.out + shown.err).split())
    assert "the time budget stopped training" in text and "after 6 of its epochs" in text
    assert "4 of 10 hits match every attribute the query names (gender female, upper_color red" in text
    assert "the test gallery holds 7 such images" in text
    assert 'personsearch query "a man in a blue jacket"' in text


def test_the_demo_data_is_reused_until_the_drawing_changes(tmp_path):
    import json as json_module

    from personsearch.demo import prepare_demo_data

    data = prepare_demo_data(tmp_path, ids=8, seed=3, workers=1)
    raw = data / "raw" / "reid_raw.json"
    first = raw.stat().st_mtime_ns
    assert prepare_demo_data(tmp_path, ids=8, seed=3, workers=1) == data and raw.stat().st_mtime_ns == first
    marker = data / "demo-data.json"
    record = json_module.loads(marker.read_text())
    marker.write_text(json_module.dumps({**record, "drawing": record["drawing"] - 1}))  # drawn by an older version
    prepare_demo_data(tmp_path, ids=8, seed=3, workers=1)
    assert raw.stat().st_mtime_ns != first and json_module.loads(marker.read_text()) == record
