"""A full disk while writing a checkpoint, an index or a prepared dataset: a clear error (exit 1
from the CLI), the previous good files intact and still loadable.

The disk is filled by patching the writer: the first bytes land, then ``ENOSPC`` is raised, as a
real full filesystem does part-way through a write."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from tests.helpers import tree_digest

from personsearch.errors import RunFailure

from ._support import assert_input_error, invoke

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd"),
]


def fill_disk_on(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``fsync`` of any file whose name contains one of ``names`` fail with ENOSPC, as a full
    filesystem reports when the written data cannot be flushed."""
    real = os.fsync

    def fsync(fd: int) -> None:
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if any(part in os.path.basename(name) for part in names):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _tiny_training_objects():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    from personsearch import runs
    from personsearch.engine import state

    model, optimizer = _tiny_training_objects()
    run = tmp_path / "run"
    state.save_training_state(run, model, optimizer, {"epoch": 1, "step": 10, "scheduler": {}}, best=True)
    good = tree_digest(run / "checkpoints")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    fill_disk_on(monkeypatch, "model.safetensors")
    with pytest.raises(RunFailure, match="disk full"):
        state.save_training_state(run, model, optimizer, {"epoch": 2, "step": 20, "scheduler": {}}, best=True)
    assert tree_digest(run / "checkpoints") == good
    monkeypatch.undo()
    checkpoint = state.load_training_state(run)
    assert checkpoint is not None and checkpoint.step == 10
    weights, meta = runs.read_weights_meta(run)
    assert meta["step"] == 10 and weights.name == "best.safetensors"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], "temp files left"


def test_disk_full_during_the_weights_link_keeps_last_consistent(tmp_path, monkeypatch):
    """The state folder landed, but the disk filled while publishing ``last``: last.json and
    last.safetensors still describe the same (previous) weights."""
    from personsearch.engine import state
    from personsearch.io import sha256_file

    model, optimizer = _tiny_training_objects()
    run = tmp_path / "run"
    state.save_training_state(run, model, optimizer, {"epoch": 1, "step": 10, "scheduler": {}})
    fill_disk_on(monkeypatch, ".last.json.")
    with pytest.raises(RunFailure, match="disk full"):
        state.save_training_state(run, model, optimizer, {"epoch": 2, "step": 20, "scheduler": {}})
    monkeypatch.undo()
    folder = run / "checkpoints"
    meta = json.loads((folder / "last.json").read_text())
    assert meta["weights_sha256"] == sha256_file(folder / "last.safetensors")


def test_train_cli_disk_full_is_a_clear_failure_and_resume_still_works(trained_run, tmp_path, monkeypatch):
    from personsearch.engine import state

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    good = tree_digest(run / "checkpoints")
    fill_disk_on(monkeypatch, "model.safetensors")
    result = invoke("--quiet", "train", "--resume", run, "--max-steps", "3")
    text = assert_input_error(result, "disk full", code=1)
    assert "previous version is intact" in text
    assert tree_digest(run / "checkpoints") == good
    assert state.load_training_state(run).step == 2


def _embeddings(n: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    rows = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    meta = [{"path": f"img{seed}_{i}.jpg", "pid": i, "size": 10, "mtime_ns": 1} for i in range(n)]
    return rows, meta


@pytest.mark.parametrize("where", ["shard", "header"])
def test_disk_full_during_an_index_append_keeps_the_index(tmp_path, monkeypatch, where):
    from personsearch.retrieval import index as index_module

    out = tmp_path / "index"
    rows, meta = _embeddings(6, 0)
    index_module.write_index(out, rows, meta, "model-a", tmp_path)
    good = tree_digest(out)
    fill_disk_on(monkeypatch, ".shard-00001.jsonl." if where == "shard" else ".header.json.")
    more, more_meta = _embeddings(4, 1)
    with pytest.raises(RunFailure, match="disk full"):
        index_module.append_to_index(out, more, more_meta, "model-a")
    monkeypatch.undo()
    assert tree_digest(out) == good
    reopened = index_module.GalleryIndex.open(out, verify=True)
    assert len(reopened) == 6
    assert len(index_module.append_to_index(out, more, more_meta, "model-a")) == 10


def test_disk_full_while_writing_an_index_leaves_no_partial_index(tmp_path, monkeypatch):
    from personsearch.retrieval import index as index_module

    out = tmp_path / "index"
    rows, meta = _embeddings(6, 0)
    index_module.write_index(out, rows, meta, "model-a", tmp_path)
    good = tree_digest(out)
    fill_disk_on(monkeypatch, "header.json")
    bigger, bigger_meta = _embeddings(9, 2)
    with pytest.raises(RunFailure, match="disk full"):
        index_module.write_index(out, bigger, bigger_meta, "model-a", tmp_path)
    assert tree_digest(out) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"], "temp folders left behind"


def test_disk_full_while_preparing_keeps_the_previous_prepared_dataset(synthetic_raw, tmp_path, monkeypatch):
    from personsearch.data import prepare_dataset
    from personsearch.data.prepared import PreparedDataset

    out = tmp_path / "prepared"
    prepare_dataset("CUHK-PEDES", synthetic_raw, out, workers=1)
    good = tree_digest(out)
    fill_disk_on(monkeypatch, "tokens.npy")
    result = invoke("prepare", "CUHK-PEDES", "--root", synthetic_raw, "--out", out, "--workers", "1")
    monkeypatch.undo()
    assert_input_error(result, "disk full", "prepared", code=1)
    assert tree_digest(out) == good
    assert PreparedDataset.load(out).fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"], "temp folders left behind"
