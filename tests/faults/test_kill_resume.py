"""SIGKILL at chosen moments of ``prepare``, ``train`` and ``export``: the previous complete output
stays valid, and rerunning (or ``--resume``) finishes the job with the result of an uninterrupted
run (bit-exact for training on CPU).

The kill is deterministic: the CLI runs in a child process in which one function is wrapped so that
its N-th call sends SIGKILL to the process itself, just before (or just after) doing its work."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import tree_digest

from ._support import REPO, tiny_sets

pytestmark = pytest.mark.faults

_KILLER = r"""
import importlib, os, signal, sys
spec, after, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if os.environ.get("FAULTS_NO_EXCHANGE"):  # systems without an atomic folder exchange
    import personsearch.io.atomic
    personsearch.io.atomic._exchange = lambda a, b: False
module_name, attr_path = spec.split(":")
owner = importlib.import_module(module_name)
*parents, attr = attr_path.split(".")
for part in parents:
    owner = getattr(owner, part)
real = getattr(owner, attr)
calls = [0]
def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] > after and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if calls[0] > after and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, attr, wrapper)
sys.argv = ["personsearch", *sys.argv[4:]]
from personsearch.cli.app import main
main()
"""


def run_killed(spec: str, after: int, when: str, *args: object, timeout: float = 300,
               exchange: bool = True) -> int:
    """Run ``personsearch ARGS`` in a child that SIGKILLs itself at call ``after + 1`` of ``spec``
    (``module:attr.path``); returns the exit status (``-SIGKILL`` when the kill point was reached)."""
    env_python = [sys.executable, "-c", _KILLER, spec, str(after), when, *map(str, args)]
    env = _env() if exchange else {**_env(), "FAULTS_NO_EXCHANGE": "1"}
    proc = subprocess.run(env_python, cwd=REPO, capture_output=True, timeout=timeout, env=env)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(proc.stderr.decode()[-3000:])
    return proc.returncode


def run_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "personsearch", *map(str, args)], cwd=REPO,
                          capture_output=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------
# prepare


@pytest.mark.parametrize(
    ("spec", "after", "when", "exchange"),
    [
        # tokens built, nothing written
        pytest.param("personsearch.data.prepared:_npy_bytes", 0, "after", True, id="before-write",
                     marks=pytest.mark.slow),
        # the new folder complete, not swapped in
        pytest.param("personsearch.io.atomic:_exchange", 0, "before", True, id="before-swap"),
        # swapped in, the old one not yet removed
        pytest.param("personsearch.io.atomic:_exchange", 0, "after", True, id="after-swap"),
        # without an atomic exchange (os.replace call 1 writes the owner marker inside the new
        # folder): before moving the old aside
        pytest.param("os:replace", 1, "before", False, id="fallback-before", marks=pytest.mark.slow),
        # ... between moving the old aside and the new in place
        pytest.param("os:replace", 1, "after", False, id="fallback-mid"),
        # ... the new in place, the old not yet removed
        pytest.param("os:replace", 2, "after", False, id="fallback-after", marks=pytest.mark.slow),
    ],
)
def test_prepare_killed_keeps_the_previous_output_and_a_rerun_completes(
    synthetic_raw, tmp_path, spec, after, when, exchange
):
    from personsearch.data.prepared import PreparedDataset

    out = tmp_path / "prepared"
    args = ("prepare", "CUHK-PEDES", "--root", synthetic_raw, "--out", out, "--workers", "1", "--json")
    run_cli(*args)
    good = tree_digest(out)
    raw_before = tree_digest(synthetic_raw)

    assert run_killed(spec, after, when, *args, exchange=exchange) == -signal.SIGKILL
    if exchange or (after, when) != (1, "after"):
        assert out.is_dir(), "the prepared dataset vanished"
        assert tree_digest(out) == good
        assert PreparedDataset.load(out).fingerprint
    # else: killed between the two renames of the fallback; the next writer puts the old folder back

    run_cli(*args)
    assert tree_digest(out) == good  # same input, same bytes
    assert tree_digest(synthetic_raw) == raw_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"], "leftover temp folders"


def test_a_folder_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
    from personsearch.io import atomic_directory

    target = tmp_path / "index"
    target.mkdir()
    (target / "header.json").write_text("old")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    target.rename(tmp_path / f".index.old-{gone.pid}")
    (tmp_path / f".index.{gone.pid}.abc12345.tmp").mkdir()  # mkdtemp: 8 random characters
    (tmp_path / f".index.{gone.pid}.mine.tmp").mkdir()  # a look-alike of the user's: kept
    with pytest.raises(RuntimeError):
        with atomic_directory(target):
            assert (target / "header.json").read_text() == "old"
            raise RuntimeError("the writer fails: the old folder must stay")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".index.{gone.pid}.mine.tmp", "index"]
    assert (target / "header.json").read_text() == "old"


def test_prepare_killed_on_a_first_run_leaves_no_partial_output(synthetic_raw, tmp_path):
    out = tmp_path / "prepared"
    args = ("prepare", "CUHK-PEDES", "--root", synthetic_raw, "--out", out, "--workers", "1")
    assert run_killed("os:replace", 1, "before", *args) == -signal.SIGKILL  # call 1: the owner marker
    assert not out.exists() or not any(out.iterdir())
    run_cli(*args)
    assert (out / "manifest.json").is_file()


# --------------------------------------------------------------------------------------------
# train


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "last.safetensors"))


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight_run(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    parent = tmp_path_factory.mktemp("kill-train")
    base = ["--quiet", "train", "--data", str(prepared_tiny), *tiny_sets(f"runtime.output_dir={parent}")]
    run_cli(*base, "--name", "straight")
    return parent, base


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "after", "when"),
    [
        ("torch.optim:Adam.step", 3, "before"),  # mid-way through the first epoch, no checkpoint yet
        ("torch.optim:Adam.step", 10, "after"),  # inside the second epoch
        ("personsearch.engine.state:save_file", 1, "before"),  # writing the first checkpoint's optimizer
        ("personsearch.engine.state:atomic_write_json", 0, "before"),  # state folder done, last.json not
        ("personsearch.engine.state:_prune", 1, "before"),  # second checkpoint published, old not pruned
    ],
    ids=["step-3", "epoch-2", "checkpoint-write", "before-last-json", "before-prune"],
)
def test_train_killed_then_resumed_equals_an_uninterrupted_run(straight_run, spec, after, when):
    parent, base = straight_run
    name = f"killed-{spec.split(':')[1]}-{after}"
    assert run_killed(spec, after, when, *base, "--name", name) == -signal.SIGKILL
    run = parent / name
    run_cli("--quiet", "train", "--resume", run)
    assert _same(_weights(parent / "straight"), _weights(run))
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    straight_meta = json.loads((parent / "straight" / "checkpoints" / "last.json").read_text())
    assert meta["step"] == straight_meta["step"] and meta["weights_sha256"] == straight_meta["weights_sha256"]
    assert not (run / ".lock").exists()


@pytest.mark.slow
def test_train_killed_twice_still_resumes_exactly(straight_run):
    parent, base = straight_run
    assert run_killed("torch.optim:Adam.step", 5, "before", *base, "--name", "twice") == -signal.SIGKILL
    run = parent / "twice"
    assert run_killed("personsearch.engine.state:save_file", 2, "before", "--quiet", "train", "--resume",
                      run) in (0, -signal.SIGKILL)
    run_cli("--quiet", "train", "--resume", run)
    assert _same(_weights(parent / "straight"), _weights(run))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
