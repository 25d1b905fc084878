"""The eval verb end to end: metrics equal a plain recomputation, a valid sheet, IRRA run folders,
and one clear message for each kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.io import read_jsonl

runner = CliRunner()


@pytest.fixture(scope="module")
def eval_run(trained_run, tmp_path_factory):
    """A private copy of the session's ``trained_run``: ``eval`` appends its results to RUN/metrics.jsonl
    (and test_eval_val_split checks they are there)."""
    run = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(trained_run, run)
    return run


def test_eval_json_matches_a_plain_recomputation(eval_run, prepared_tiny):
    from personsearch.data.prepared import PreparedDataset
    from personsearch.engine.evaluate import evaluate_split
    from personsearch.runs import load_trained

    result = runner.invoke(app, ["eval", str(eval_run), "--json", "--i2t"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["t2i"]) == {"R1", "R5", "R10", "mAP", "mINP"} and set(report["i2t"]) == set(report["t2i"])
    assert report["split"] == "test" and report["skipped_images"] == 0

    model = load_trained(eval_run)
    prepared = PreparedDataset.load(prepared_tiny)
    direct = evaluate_split(model.clip, prepared, "test", model.settings, keep_similarity=True)
    assert direct.t2i == pytest.approx(report["t2i"])
    sim = direct.similarity.double()
    assert report["t2i"]["R1"] == pytest.approx(
        100.0 * sum(int(direct.gallery_pids[int(torch.argmax(row))]) == int(pid)
                    for row, pid in zip(sim, direct.query_pids, strict=True)) / sim.shape[0])

    records = [row for row in read_jsonl(eval_run / "metrics.jsonl") if row.get("eval") == "test"]
    assert records and records[-1]["t2i"] == report["t2i"] and records[-1]["data"] == report["data"]


def test_eval_sheet_is_a_png(eval_run, tmp_path):
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(app, ["eval", str(eval_run), "--sheet", str(sheet), "--queries", "3"])
    assert result.exit_code == 0, result.output
    assert "R1" in result.stdout
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.height > 3 * 64


def test_eval_reads_an_irra_run_folder(eval_run, prepared_tiny, tmp_path):
    """An IRRA output folder (configs.yaml dumped from argparse, best.pth = {"model": ...}). It records
    no head counts, so it is read with width / 64 heads: the shared run is trained with as many
    (tests.helpers.TRAINED_RUN_SETS), else the two evaluations would differ."""
    irra = tmp_path / "irra_run"
    irra.mkdir()
    weights = load_file(str(eval_run / "checkpoints" / "best.safetensors"))
    torch.save({"model": weights, "num_epoch": 1}, irra / "best.pth")
    (irra / "configs.yaml").write_text(
        "dataset_name: CUHK-PEDES\nimg_size: !!python/tuple\n- 64\n- 32\nstride_size: 16\n"
        "loss_names: sdm+mlm+id\ntemperature: 0.02\ncmt_depth: 1\ntext_length: 77\nvocab_size: 49408\n"
    )
    ours = runner.invoke(app, ["eval", str(eval_run), "--json"])
    theirs = runner.invoke(app, ["eval", str(irra), "--data", str(prepared_tiny), "--json"])
    assert theirs.exit_code == 0, theirs.output
    assert json.loads(theirs.stdout)["t2i"] == pytest.approx(json.loads(ours.stdout)["t2i"])
    assert sorted(p.name for p in irra.iterdir()) == ["best.pth", "configs.yaml"]  # nothing written there


def test_eval_bad_input(eval_run, prepared_tiny, tmp_path):
    cases = [
        (["eval", str(tmp_path / "missing")], "not found"),
        (["eval", str(eval_run), "--split", "train"], "--split"),
        (["eval", str(prepared_tiny)], "not a run folder"),
    ]
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    (empty_run / "config.yaml").write_text((eval_run / "config.yaml").read_text())
    cases.append((["eval", str(empty_run)], "no weights yet"))
    for args, needle in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output


def test_eval_refuses_a_dataset_from_another_tokenizer(eval_run, prepared_tiny, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(prepared_tiny, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"] = "0123456789abcdef"
    (other / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["eval", str(eval_run), "--data", str(other)])
    assert result.exit_code == 2 and "another tokenizer" in result.output


def test_eval_val_split(eval_run):
    result = runner.invoke(app, ["eval", str(eval_run), "--split", "val", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["split"] == "val"
    assert any(row.get("eval") == "val" for row in read_jsonl(Path(eval_run) / "metrics.jsonl"))
