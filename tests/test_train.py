"""Training: the loss falls, resume is exact (after a budget stop and after SIGKILL), a non-finite loss
stops cleanly, a corrupt image is skipped, and two gloo processes stay in lockstep."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import TINY_SETS
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.engine.train import train
from personsearch.errors import RunFailure
from personsearch.io import read_jsonl
from personsearch.settings import resolve_settings

runner = CliRunner()


def _weights(run: Path, tag: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"{tag}.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _settings(tiny_settings, **changes):
    sets = [f"{k}={v}" for k, v in changes.items()]
    return resolve_settings(base=tiny_settings, sets=sets, environ={})


def test_loss_falls_and_metrics_are_logged(tiny_settings, tmp_path):
    settings = _settings(tiny_settings, **{"train.epochs": 4, "loss.names": "sdm+id+mlm"})
    result = train(settings, settings.data.root, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "R1" in r]
    assert len(steps) == result.steps and result.steps >= 24
    for row in steps:
        assert {"epoch", "step", "lr", "loss", "sdm_loss", "id_loss", "mlm_loss"} <= row.keys()
    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    for key, factor in (("loss", 0.93), ("mlm_loss", 0.8), ("id_loss", 0.97)):
        first, last = mean(steps[:6], key), mean(steps[-6:], key)
        assert last < factor * first, (key, first, last)
    assert len(evals) == 4 and all({"R1", "R5", "R10", "mAP", "mINP", "split"} <= r.keys() for r in evals)
    assert result.best["R1"] == max(r["R1"] for r in evals)
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").is_file()
    # log.txt reads as a log: one line per logged step and per evaluation, numbers named
    log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    assert log.count(" step ") >= result.steps and "epoch 1 step 1: loss " in log and "sdm_loss " in log
    assert log.count("evaluated on val: R1 ") == 4 and "queries without a match" in log
    meta = json.loads((tmp_path / "run" / "checkpoints" / "last.json").read_text())
    assert meta["epoch"] == 4 and meta["step"] == result.steps and "weights_sha256" in meta


def test_resume_after_budget_stop_is_exact(tiny_settings, tmp_path):
    straight = _settings(tiny_settings, **{"masking.strategy": "attention"})
    result = train(straight, straight.data.root, tmp_path / "straight")
    steps_per_epoch = result.steps // 2

    # Stop mid-way through the first epoch, resume with a budget that ends in epoch 2, then finish.
    first = _settings(straight, **{"train.max_steps": steps_per_epoch - 2})
    stopped = train(first, first.data.root, tmp_path / "resumed")
    assert stopped.stopped == "max_steps" and stopped.steps == steps_per_epoch - 2
    second = _settings(straight, **{"train.max_steps": steps_per_epoch + 1})
    assert train(second, second.data.root, tmp_path / "resumed", resume=True).stopped == "max_steps"
    final = train(straight, straight.data.root, tmp_path / "resumed", resume=True)
    assert final.steps == result.steps
    assert _same(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_settings, tmp_path, monkeypatch):
    import personsearch.model.irra as irra

    settings = _settings(tiny_settings, **{"train.epochs": 3})
    run = tmp_path / "run"
    original = irra.sdm_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = original(*args, **kwargs)
        return value * float("nan") if calls["n"] == 12 else value

    monkeypatch.setattr(irra, "sdm_loss", poisoned)
    with pytest.raises(RunFailure, match=r"non-finite loss at step 12 .*sdm_loss"):
        train(settings, settings.data.root, run)
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    assert meta["step"] < 12 and meta["epoch"] >= 1
    assert all(torch.isfinite(t).all() for t in _weights(run).values())


def test_corrupt_training_image_is_skipped_and_counted(synthetic_raw, tmp_path):
    from personsearch.data import prepare_dataset

    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    prepare_dataset("CUHK-PEDES", raw, tmp_path / "prep", workers=1)
    entries = json.loads((raw / "reid_raw.json").read_text())
    victim = next(e for e in entries if e["split"] == "train")
    (raw / "imgs" / victim["file_path"]).write_bytes(b"<html>not an image</html>")
    settings = resolve_settings(sets=TINY_SETS + [f"data.root={tmp_path / 'prep'}", "train.epochs=1"], environ={})
    result = train(settings, settings.data.root, tmp_path / "run")
    assert result.skipped_images == len(victim["captions"])
    steps = [row for row in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in row]
    assert steps[-1]["skipped_images"] == len(victim["captions"])


def test_train_cli_json_and_resume(prepared_tiny, tmp_path):
    args = ["train", "--data", str(prepared_tiny), "--name", "cli", "--json", "--max-steps", "3"]
    for item in TINY_SETS + [f"runtime.output_dir={tmp_path}"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["stopped"] == "max_steps" and summary["steps"] == 3
    assert (tmp_path / "cli" / "config.yaml").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    resumed = runner.invoke(app, ["train", "--resume", str(tmp_path / "cli"), "--json", "--max-steps", "5"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["steps"] == 5
    missing = runner.invoke(app, ["train", "--data", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not found" in missing.output


def _cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "personsearch", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(prepared_tiny, tmp_path):
    sets = []
    for item in TINY_SETS + [f"runtime.output_dir={tmp_path}", "train.epochs=3"]:
        sets += ["--set", item]
    base = ["--quiet", "train", "--data", str(prepared_tiny), *sets]
    straight = _cli([*base, "--name", "straight"])
    assert straight.wait(timeout=300) == 0, straight.stderr.read().decode()

    victim = _cli([*base, "--name", "killed"])
    last = tmp_path / "killed" / "checkpoints" / "last.json"
    deadline = time.monotonic() + 300
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside the second epoch or its checkpoint write
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = _cli(["--quiet", "train", "--resume", str(tmp_path / "killed")])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert _same(_weights(tmp_path / "straight"), _weights(tmp_path / "killed"))

    def logged_steps(run):
        return [row["step"] for row in read_jsonl(run / "metrics.jsonl") if "loss" in row]

    assert logged_steps(tmp_path / "killed") == logged_steps(tmp_path / "straight")


def _ddp_worker(rank: int, world: int, port: int, settings_dict: dict, run: str, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from personsearch.settings import Settings

    result = train(Settings.model_validate(settings_dict), settings_dict["data"]["root"], run)
    state = result.model.state_dict()
    torch.save({k: v.clone() for k, v in state.items()}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_parameters(tiny_settings, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = _settings(tiny_settings, **{"train.max_steps": 3, "loss.gather": "true"})
    mp.spawn(_ddp_worker, args=(2, port, settings.to_dict(), str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert _same(a, b)
    assert _same(a, _weights(tmp_path / "run"))  # rank 0 wrote the same weights


def test_a_python_caller_gets_the_clis_lock_and_run_checks(tiny_settings, tmp_path):
    """``train()`` itself takes the run's lock and checks a resumed folder, as ``personsearch train``
    does: a second writer is refused, and resuming a folder that is not a run changes nothing."""
    from personsearch.errors import InputError
    from personsearch.io import RunLock

    settings = _settings(tiny_settings, **{"train.max_steps": 1})
    run = tmp_path / "run"
    train(settings, settings.data.root, run)
    with RunLock(run), pytest.raises(InputError, match="in use"):
        train(settings, settings.data.root, run, resume=True)
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not a run folder"):
        train(settings, settings.data.root, stranger, resume=True)
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]
    with pytest.raises(InputError, match="already exists"):
        train(settings, settings.data.root, stranger)
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]
