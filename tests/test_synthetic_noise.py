"""``prepare synthetic --noise``: a share of the training captions describe other identities, exactly
as ``raw/noise.json`` records; validation and test stay clean; the same seed gives the same swap."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from personsearch.cli.app import app

runner = CliRunner()


def _prepare(out: Path, *extra: str):
    return runner.invoke(app, ["prepare", "synthetic", "--out", str(out), "--ids", "12", "--workers", "1",
                               "--json", *extra])


def test_noise_swaps_training_captions_and_records_which(tmp_path):
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    assert _prepare(clean).exit_code == 0
    result = _prepare(noisy, "--noise", "0.3")
    assert result.exit_code == 0, result.output
    assert not (clean / "raw" / "noise.json").exists()
    record = json.loads((noisy / "raw" / "noise.json").read_text())
    before = json.loads((clean / "raw" / "reid_raw.json").read_text())
    after = json.loads((noisy / "raw" / "reid_raw.json").read_text())
    by_path = {entry["file_path"]: entry for entry in before}
    moved = {(n["file_path"], n["caption"]): n for n in record["noisy"]}
    assert record["rate"] == 0.3 and len(moved) == int(0.3 * record["pairs"])
    assert record["pairs"] == sum(len(e["captions"]) for e in before if e["split"] == "train")
    for entry in after:
        original = by_path[entry["file_path"]]
        assert entry["id"] == original["id"] and entry["split"] == original["split"]
        for slot, caption in enumerate(entry["captions"]):
            swap = moved.get((entry["file_path"], slot))
            if swap is None:
                assert caption == original["captions"][slot]
                continue
            assert entry["split"] == "train" and swap["id"] == entry["id"] != swap["from"]["id"]
            source = by_path[swap["from"]["file_path"]]
            assert caption == source["captions"][swap["from"]["caption"]]
            assert entry["processed_tokens"][slot] == source["processed_tokens"][swap["from"]["caption"]]


def test_the_same_seed_swaps_the_same_captions_and_bad_rates_are_refused(tmp_path):
    assert _prepare(tmp_path / "a", "--noise", "0.5").exit_code == 0
    assert _prepare(tmp_path / "b", "--noise", "0.5").exit_code == 0
    assert (tmp_path / "a" / "raw" / "noise.json").read_text() == (tmp_path / "b" / "raw" / "noise.json").read_text()
    for bad in ("1", "-0.1", "abc"):
        result = _prepare(tmp_path / "c", "--noise", bad)
        assert result.exit_code == 2 and "Traceback" not in result.output
    result = runner.invoke(app, ["prepare", "CUHK-PEDES", "--root", str(tmp_path), "--out", str(tmp_path / "d"),
                                 "--noise", "0.2"])
    assert result.exit_code == 2 and "only apply to `prepare synthetic`" in result.output
