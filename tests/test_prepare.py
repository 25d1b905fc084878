"""Preparing datasets: counts, remapping, tokens, determinism, atomic writes, errors and the verb."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _raw_datasets import standard_records, write_raw
from personsearch.cli.app import app
from personsearch.data import PreparedDataset, prepare_dataset
from personsearch.errors import InputError, RunFailure
from personsearch.text import tokenize

runner = CliRunner()


def cuhk(tmp_path: Path, extra: list | None = None) -> Path:
    records = standard_records("CUHK-PEDES", {"train": [12, 5, 40], "val": [7], "test": [9, 3]})
    records += extra or []
    return write_raw(tmp_path / "CUHK-PEDES", "CUHK-PEDES", records)


def test_prepare_counts_remapping_and_tokens(tmp_path):
    bad = [{"id": 99, "split": "test", "file_path": "nope.jpg", "captions": ["x"]}]
    root = cuhk(tmp_path, bad)
    (root / "imgs" / "nope.jpg").unlink()
    report = prepare_dataset("cuhk-pedes", tmp_path, tmp_path / "prep", workers=2)
    assert report.splits == {
        "train": {"ids": 3, "images": 6, "captions": 12},
        "val": {"ids": 1, "images": 2, "captions": 4},
        "test": {"ids": 2, "images": 4, "captions": 8},
    }
    assert [(p.entry, p.path, p.problem) for p in report.problems] == [
        (12, "nope.jpg", "image file not found")
    ]
    prepared = PreparedDataset.load(tmp_path / "prep")
    assert prepared.raw_root == root.resolve() and prepared.splits == ("train", "val", "test")
    assert prepared.num_train_ids == 3
    train = prepared.entries("train")
    assert [(e.id, e.pid) for e in train] == [(12, 1), (12, 1), (5, 0), (5, 0), (40, 2), (40, 2)]
    assert [e.image_id for e in train] == list(range(6))
    assert [e.pid for e in prepared.entries("test")] == [9, 9, 3, 3]  # file ids kept
    assert prepared.image_path(train[0]).is_file()
    captions = [c for split in prepared.splits for e in prepared.entries(split) for c in e.captions]
    assert prepared.tokens.dtype == np.int32
    np.testing.assert_array_equal(prepared.tokens, tokenize(captions).numpy())
    np.testing.assert_array_equal(prepared.caption_tokens("val"), tokenize(captions[12:16]).numpy())
    assert prepared.fingerprint == report.fingerprint and len(prepared.fingerprint) == 16


def test_other_formats(tmp_path):
    icfg = write_raw(
        tmp_path / "ICFG-PEDES", "ICFG-PEDES", standard_records("ICFG-PEDES", {"train": [2, 4], "test": [8]})
    )
    report = prepare_dataset("ICFG-PEDES", icfg, tmp_path / "icfg")
    assert report.splits["train"] == {"ids": 2, "images": 4, "captions": 4} and "val" not in report.splits
    rstp = write_raw(
        tmp_path / "RSTPReid", "RSTPReid", standard_records("RSTPReid", {"train": [0, 1], "val": [5]})
    )
    report = prepare_dataset("rstpreid", rstp, tmp_path / "rstp")
    assert report.splits["val"] == {"ids": 1, "images": 2, "captions": 4}
    assert PreparedDataset.load(tmp_path / "rstp").splits == ("train", "val")


def test_deterministic_and_atomic(tmp_path, monkeypatch):
    cuhk(tmp_path)
    out = tmp_path / "prep"
    prepare_dataset("CUHK-PEDES", tmp_path, out, workers=1)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    prepare_dataset("CUHK-PEDES", tmp_path, out, workers=3)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert sorted(first) == [".personsearch.json", "manifest.json", "tokens.npy"]  # the owner marker

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(RunFailure, match="disk full"):
        prepare_dataset("CUHK-PEDES", tmp_path, out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refuses_to_replace_foreign_folders(tmp_path):
    root = cuhk(tmp_path)
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(InputError, match="not a prepared dataset; refusing to replace it"):
        prepare_dataset("CUHK-PEDES", root, foreign)
    assert (foreign / "thesis.txt").read_text() == "precious"
    with pytest.raises(InputError, match="is the raw dataset folder"):
        prepare_dataset("CUHK-PEDES", root, root)


def test_raw_dataset_inside_output_is_kept(tmp_path):
    from personsearch.data.synthetic import generate_raw_dataset

    out = tmp_path / "synthetic"  # the `prepare synthetic` layout: out/raw drawn by the tool
    root = out / "raw"
    generate_raw_dataset(root, ids=3, seed=0)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for _ in range(2):
        prepare_dataset("CUHK-PEDES", root, out)
    after = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert after == sorted(before + [Path(".personsearch.json"), Path("manifest.json"), Path("tokens.npy")])
    assert PreparedDataset.load(out).num_train_ids == 1
    user = tmp_path / "user"  # a raw dataset the user put there: never mixed with outputs
    write_raw(user / "raw", "CUHK-PEDES", standard_records("CUHK-PEDES", {"train": [1, 2]}))
    with pytest.raises(InputError, match="contains the raw dataset"):
        prepare_dataset("CUHK-PEDES", user / "raw", user)


def test_strict_and_check(tmp_path):
    cuhk(tmp_path, [{"id": 1, "split": "train", "file_path": "x.jpg", "captions": [" "]}])
    with pytest.raises(InputError, match=r"2 problem\(s\) .* first: entry 12 \(x.jpg\): caption 0 is empty"):
        prepare_dataset("CUHK-PEDES", tmp_path, tmp_path / "out", strict=True)
    report = prepare_dataset("CUHK-PEDES", tmp_path, None, check_only=True)
    assert not report.written and report.splits["train"]["images"] == 6
    assert not (tmp_path / "out").exists()


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="prepared dataset not found"):
        PreparedDataset.load(tmp_path / "none")
    with pytest.raises(InputError, match="is not a prepared dataset"):
        PreparedDataset.load(tmp_path)
    cuhk(tmp_path)
    out = tmp_path / "prep"
    prepare_dataset("CUHK-PEDES", tmp_path, out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "tokenizer": "0123456789abcdef"}))
    with pytest.raises(InputError, match="another tokenizer.*re-run `personsearch prepare`"):
        PreparedDataset.load(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "tokens.npy").write_bytes((out / "tokens.npy").read_bytes()[:-8])
    with pytest.raises(InputError, match="does not match manifest.json"):
        PreparedDataset.load(out)
    prepare_dataset("CUHK-PEDES", tmp_path, out)
    with pytest.raises(InputError, match="no 'query' split.*available: train, val, test"):
        PreparedDataset.load(out).entries("query")


def test_cli_json_and_table(tmp_path):
    cuhk(tmp_path, [{"id": 1, "split": "train", "file_path": "cam0/0012_0.jpg", "captions": ["again"]}])
    result = runner.invoke(
        app, ["prepare", "CUHK_PEDES", "--root", str(tmp_path), "--out", str(tmp_path / "p"), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == {
        "splits": {
            "train": {"ids": 3, "images": 6, "captions": 12},
            "val": {"ids": 1, "images": 2, "captions": 4},
            "test": {"ids": 2, "images": 4, "captions": 8},
        },
        "problems": [
            {"entry": 12, "path": "cam0/0012_0.jpg", "problem": "duplicate image entry (first at entry 0)"}
        ],
    }
    result = runner.invoke(app, ["prepare", "cuhk-pedes", "--root", str(tmp_path), "--check"])
    assert result.exit_code == 0 and "train" in result.stdout and "nothing written" in result.stdout
    assert "1 problem(s)" in result.stdout
    result = runner.invoke(app, ["prepare", "cuhk-pedes", "--root", str(tmp_path), "--check", "--strict"])
    assert result.exit_code == 2 and "duplicate image entry" in result.output


def test_cli_input_errors(tmp_path):
    result = runner.invoke(app, ["prepare", "cuhk-pedes", "--root", str(tmp_path / "absent"), "--out", "o"])
    assert result.exit_code == 2 and "absent" in result.output and "Traceback" not in result.output
    root = cuhk(tmp_path)
    (root / "reid_raw.json").write_text("[{]")
    result = runner.invoke(app, ["prepare", "cuhk-pedes", "--root", str(root), "--check"])
    assert result.exit_code == 2 and "line 1, column 3" in result.output
    result = runner.invoke(app, ["prepare", "cuhk-pedes", "--root", str(root), "--ids", "5", "--check"])
    assert result.exit_code == 2 and "only apply to `prepare synthetic`" in result.output
    result = runner.invoke(app, ["prepare", "imagenet", "--root", str(root), "--check"])
    assert result.exit_code == 2 and "unknown dataset format" in result.output


def test_cli_synthetic(tmp_path):
    synthetic = pytest.importorskip("personsearch.data.synthetic")
    if not hasattr(synthetic, "generate_raw_dataset"):
        pytest.skip("the synthetic generator is not available yet")
    out = tmp_path / "syn"
    result = runner.invoke(
        app,
        [
            "prepare",
            "synthetic",
            "--out",
            str(out),
            "--ids",
            "12",
            "--seed",
            "3",
            "--workers",
            "1",
            "--preview",
            str(tmp_path / "p.png"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["problems"] == [] and sum(s["ids"] for s in data["splits"].values()) == 12
    prepared = PreparedDataset.load(out)
    assert (
        prepared.raw_root == (out / "raw").resolve()
        and prepared.num_train_ids == data["splits"]["train"]["ids"]
    )
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
