"""Runs never escape their folder, never lose trained weights to an evaluation, never change on a
refused resume, leave nothing behind when refused, and stop cleanly (130/143) on SIGINT/SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import tree_digest

from ._support import REPO, assert_input_error, invoke, tiny_sets

pytestmark = pytest.mark.faults


def _train_args(prepared: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(prepared), *tiny_sets(f"runtime.output_dir={out}"), *extra]


# ------------------------------------------------------------------------------ run names


@pytest.mark.parametrize("name", ["../escaped", "ABSOLUTE", "a/b", "..", ".", ".hidden", "x\x00y", "tab\there", "",
                                  "\u202eevil", "zero\u200bwidth"])
def test_run_name_is_one_safe_folder_name(prepared_tiny, tmp_path, name):
    out = tmp_path / "runs" / "inner"
    absolute = tmp_path / "elsewhere" / "abs-run"
    name = str(absolute) if name == "ABSOLUTE" else name
    before = set(tmp_path.rglob("*"))
    result = invoke(*_train_args(prepared_tiny, out, "--name", name, "--max-steps", "1"))
    assert_input_error(result, "--name")
    assert set(tmp_path.rglob("*")) == before
    assert not absolute.exists()


def test_create_run_refuses_a_path_as_name(tiny_settings, tmp_path):
    from personsearch.errors import InputError
    from personsearch.runs import create_run

    with pytest.raises(InputError, match="not a valid run name"):
        create_run(tiny_settings, name="../x", output_dir=tmp_path / "runs")
    assert not (tmp_path / "x").exists()


def test_existing_user_folder_is_not_taken_as_a_run(prepared_tiny, tmp_path):
    out = tmp_path / "runs"
    user = out / "mine"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    before = tree_digest(out)
    result = invoke(*_train_args(prepared_tiny, out, "--name", "mine", "--max-steps", "1"))
    assert_input_error(result, "already exists")
    assert tree_digest(out) == before
    resumed = invoke("train", "--resume", str(user))
    assert_input_error(resumed, "not a run folder")
    assert tree_digest(out) == before


# ------------------------------------------------------------------- refused before a checkpoint


@pytest.mark.parametrize("error", [RuntimeError("boom"), MemoryError(), ValueError("bad"), KeyboardInterrupt()])
def test_any_failure_before_the_first_checkpoint_leaves_no_run(prepared_tiny, tmp_path, monkeypatch, error):
    import personsearch.model.irra as irra

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(irra, "build_irra", broken)
    out = tmp_path / "runs"
    result = invoke(*_train_args(prepared_tiny, out, "--name", "r", "--max-steps", "1"))
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert not (out / "r").exists()
    monkeypatch.undo()
    again = invoke(*_train_args(prepared_tiny, out, "--name", "r", "--max-steps", "1"))
    assert again.exit_code == 0, again.output


def test_empty_user_folder_given_as_run_is_kept_on_failure(prepared_tiny, tmp_path, monkeypatch):
    import personsearch.model.irra as irra

    out = tmp_path / "runs"
    (out / "r").mkdir(parents=True)
    monkeypatch.setattr(irra, "build_irra", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    result = invoke(*_train_args(prepared_tiny, out, "--name", "r", "--max-steps", "1"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (out / "r").is_dir()


def test_missing_eval_split_is_refused_before_training(prepared_without_val, tmp_path):
    out = tmp_path / "runs"
    result = invoke(*_train_args(prepared_without_val, out, "--name", "r", "--set", "eval.split=val"))
    assert_input_error(result, "eval.split", "val", "test")
    assert not (out / "r").exists()


# ----------------------------------------------------------- evaluation never costs the weights


def test_failed_evaluation_keeps_the_epochs_checkpoint_and_resume_evaluates_it(prepared_tiny, tmp_path,
                                                                             monkeypatch):
    import personsearch.engine.train as engine

    real = engine.evaluate_split
    monkeypatch.setattr(engine, "evaluate_split", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "I/O error")))
    out = tmp_path / "runs"
    result = invoke(*_train_args(prepared_tiny, out, "--name", "r"))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "evaluation" in result.output and "saved" in result.output
    last = json.loads((out / "r" / "checkpoints" / "last.json").read_text())
    assert last["epoch"] == 1 and last["step"] > 0 and last["pending_eval"] is True
    assert (out / "r" / "checkpoints" / "last.safetensors").is_file()

    monkeypatch.setattr(engine, "evaluate_split", real)
    resumed = invoke("train", "--resume", str(out / "r"), "--json")
    assert resumed.exit_code == 0, resumed.output
    evals = [row for row in _metrics(out / "r") if "R1" in row]
    assert [row["epoch"] for row in evals] == [1, 2]
    best = json.loads((out / "r" / "checkpoints" / "best.json").read_text())
    assert "R1" in best["metrics"] and best["pending_eval"] is False


def test_library_evaluation_error_is_a_run_failure_with_weights_saved(tiny_settings, tmp_path, monkeypatch):
    import personsearch.engine.train as engine
    from personsearch.errors import RunFailure

    monkeypatch.setattr(engine, "evaluate_split", lambda *a, **k: (_ for _ in ()).throw(ZeroDivisionError()))
    with pytest.raises(RunFailure, match="trained weights are saved"):
        engine.train(tiny_settings, tiny_settings.data.root, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()


# --------------------------------------------------------------------- a refused resume changes nothing


@pytest.fixture()
def stopped_run(prepared_tiny, tmp_path) -> Path:
    out = tmp_path / "runs"
    result = invoke(*_train_args(prepared_tiny, out, "--name", "r", "--max-steps", "3"))
    assert result.exit_code == 0, result.output
    return out / "r"


@pytest.mark.parametrize(("sets", "words"), [
    (["optim.optimizer=AdamW"], ["optim.optimizer", "Adam", "AdamW"]),
    (["model.arch.text_width=128"], ["model.arch.text_width", "64", "128"]),
    (["loss.names=sdm+id"], ["loss.names"]),
    (["masking.strategy=attention"], ["masking.strategy"]),
])
def test_resume_with_changed_settings_is_refused_and_changes_nothing(stopped_run, sets, words):
    before = tree_digest(stopped_run)
    args = ["train", "--resume", str(stopped_run)]
    for item in sets:
        args += ["--set", item]
    result = invoke(*args)
    assert_input_error(result, "cannot resume", *words)
    assert tree_digest(stopped_run) == before


def test_resume_on_another_dataset_is_refused(stopped_run, synthetic_raw, tmp_path):
    from personsearch.data import prepare_dataset
    from personsearch.data.synthetic import generate_raw_dataset

    raw = tmp_path / "raw16"
    generate_raw_dataset(raw, ids=16, seed=1, workers=1)
    prepare_dataset("CUHK-PEDES", raw, tmp_path / "prep16", workers=1)
    before = tree_digest(stopped_run)
    result = invoke("train", "--resume", str(stopped_run), "--data", str(tmp_path / "prep16"))
    assert_input_error(result, "cannot resume", "identities")
    assert tree_digest(stopped_run) == before


@pytest.mark.parametrize("damage", [
    lambda s: s.write_text("{not json"),
    lambda s: s.write_text(json.dumps({**json.loads(s.read_text()), "epoch": "x"})),
    lambda s: s.write_text(json.dumps({k: v for k, v in json.loads(s.read_text()).items() if k != "scheduler"})),
    lambda s: s.write_text(json.dumps({**json.loads(s.read_text()), "step": 10**30})),
    lambda s: (s.parent / "optimizer.safetensors").write_bytes(b"\x00" * 16),
])
def test_resume_from_a_damaged_state_is_refused_and_changes_nothing(stopped_run, damage):
    state = next((stopped_run / "checkpoints").glob("state-*")) / "state.json"
    damage(state)
    before = tree_digest(stopped_run)
    result = invoke("train", "--resume", str(stopped_run))
    assert_input_error(result)
    assert any(word in result.output for word in ("damaged", "corrupt", "cannot resume")), result.output
    assert tree_digest(stopped_run) == before


# ------------------------------------------------------------------------------ signals

_SIGNALLER = r"""
import importlib, os, signal, sys
spec, after, signame, target = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
module_name, attr = spec.split(":")
owner = importlib.import_module(module_name)
real = getattr(owner, attr)
calls = [0]
def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] == after + 1:
        signum = getattr(signal, signame)
        if target == "group":   # Ctrl-C in a terminal: every process of the group, workers included
            os.killpg(os.getpgid(0), signum)
        else:
            os.kill(os.getpid(), signum)
    return real(*args, **kwargs)
setattr(owner, attr, wrapper)
sys.argv = ["personsearch", *sys.argv[5:]]
from personsearch.cli.app import main
main()
"""


def _signalled(spec: str, after: int, signame: str, target: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _SIGNALLER, spec, str(after), signame, target, *args],
                          cwd=REPO, capture_output=True, timeout=300, env=env, start_new_session=True)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(("signame", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_during_steps_saves_and_exits_non_zero(prepared_tiny, tmp_path, signame, code):
    out = tmp_path / "runs"
    proc = _signalled("personsearch.engine.train:_to_device", 1, signame, "self",
                      *_train_args(prepared_tiny, out, "--name", "r", "--set", "data.workers=1"))
    assert proc.returncode == code, proc.stderr.decode()[-2000:]
    assert b"Traceback" not in proc.stderr
    last = json.loads((out / "r" / "checkpoints" / "last.json").read_text())
    assert last["step"] == 2 and last["epoch"] == 0
    resumed = invoke("train", "--resume", str(out / "r"), "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["stopped"] == "finished"


def test_ctrl_c_during_evaluation_with_workers_is_clean_and_resumable(prepared_tiny, tmp_path):
    out = tmp_path / "runs"
    # The collate function runs inside the evaluation's DataLoader workers: the group-wide SIGINT
    # reaches the workers and the main process mid-evaluation, as Ctrl-C in a terminal does.
    proc = _signalled("personsearch.engine.evaluate:_collate_readable", 0, "SIGINT", "group",
                      *_train_args(prepared_tiny, out, "--name", "r", "--set", "data.workers=1",
                                   "--set", "eval.batch_size=2"))
    assert proc.returncode == 130, proc.stderr.decode()[-2000:]
    assert b"Traceback" not in proc.stderr
    last = json.loads((out / "r" / "checkpoints" / "last.json").read_text())
    assert last["epoch"] == 1 and last["pending_eval"] is True
    assert not [row for row in _metrics(out / "r") if "R1" in row]
    resumed = invoke("train", "--resume", str(out / "r"), "--json")
    assert resumed.exit_code == 0, resumed.output
    assert [row["epoch"] for row in _metrics(out / "r") if "R1" in row] == [1, 2]


def test_library_caller_sees_the_interruption(tiny_settings, tmp_path, monkeypatch):
    import personsearch.engine.train as engine

    real = engine._to_device
    calls = [0]

    def interrupting(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_to_device", interrupting)
    result = engine.train(tiny_settings, tiny_settings.data.root, tmp_path / "run")
    assert result.stopped == "interrupted" and result.signal == signal.SIGTERM and result.steps == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


# ---------------------------------------------------------------------------------- demo


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "runs"
    run = out / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  epochs: 3\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.safetensors").write_bytes(b"user weights")
    before = tree_digest(out)
    result = invoke("demo", "--out", str(out), "--ids", "8", "--minutes", "0.05", "--workers", "0")
    assert_input_error(result, "--out", "refusing")
    assert tree_digest(out) == before


def test_demo_refuses_an_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("demo", "--out", str(blocker / "demo"), "--ids", "8", "--minutes", "0.05")
    assert_input_error(result, "--out")
    assert blocker.read_text() == "x"


def test_an_epoch_whose_images_are_all_unreadable_fails_clearly(raw_copy, tmp_path):
    from tests.helpers import TINY_SETS

    from personsearch.data import prepare_dataset
    from personsearch.engine.train import train
    from personsearch.errors import RunFailure
    from personsearch.settings import resolve_settings

    from ._support import raw_entries

    prepare_dataset("CUHK-PEDES", raw_copy, tmp_path / "prep", workers=1)
    for entry in raw_entries(raw_copy):
        if entry["split"] == "train":
            (raw_copy / "imgs" / entry["file_path"]).write_bytes(b"gone")
    settings = resolve_settings(sets=TINY_SETS + [f"data.root={tmp_path / 'prep'}", "train.epochs=1"], environ={})
    with pytest.raises(RunFailure, match="no training image of epoch 1 could be read"):
        train(settings, settings.data.root, tmp_path / "run")
