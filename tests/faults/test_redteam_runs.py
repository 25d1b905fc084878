"""Red-team cases for runs, locks and the train/demo verbs: links and special files where a run keeps
its own files, two trainers racing for one name, outputs inside inputs, odd devices and --nproc."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from tests.faults._support import assert_input_error, invoke, tiny_sets
from tests.helpers import TRAINED_RUN_SETS, tree_digest

from personsearch.errors import InputError
from personsearch.io import RunLock, write_owner_marker


def _copy_run(trained_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "copy"
    shutil.copytree(trained_run, run, symlinks=True)
    return run


def _resume(run: Path, prepared: Path, *extra: str):  # noqa: ANN202
    """Resume a copy of ``trained_run`` with the settings it was trained with."""
    return invoke("train", "--resume", run, "--data", prepared, *tiny_sets(*TRAINED_RUN_SETS), "--max-steps", "3",
                  *extra)


# ------------------------------------------------------------------ the lock file


def test_lock_symlink_is_refused_and_its_target_untouched(tmp_path):
    """A `.lock` linking to a user's file: the pid used to be written through the link, and the
    link removed on release, leaving the user's file overwritten."""
    precious = tmp_path / "precious.txt"
    precious.write_text("mine\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(precious)
    with pytest.raises(InputError, match="symbolic link"):
        RunLock(run).acquire()
    assert precious.read_text() == "mine\n"
    assert (run / ".lock").is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_lock_special_file_is_refused_without_blocking(tmp_path, kind):
    """A FIFO named `.lock` used to block the trainer forever (reading the holder's pid)."""
    run = tmp_path / "run"
    run.mkdir()
    (os.mkfifo if kind == "fifo" else os.mkdir)(run / ".lock")
    with pytest.raises(InputError, match="not a regular file|a folder"):
        RunLock(run).acquire()


def test_lock_with_a_huge_pid_file_is_read_bounded(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("9" * 100_000)  # garbled: stale, taken over
    with RunLock(run):
        assert (run / ".lock").read_text() == str(os.getpid())
    assert not (run / ".lock").exists()


def test_resume_through_the_cli_with_a_lock_symlink(trained_run, prepared_tiny, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_text("mine\n")
    (run / ".lock").symlink_to(precious)
    before = tree_digest(run)
    result = _resume(run, prepared_tiny, "--json")
    assert_input_error(result, ".lock", "symbolic link")
    assert result.stdout == ""
    assert precious.read_text() == "mine\n" and tree_digest(run) == before


# ------------------------------------------------------------------ a run's own files replaced


@pytest.mark.parametrize("name", ["log.txt", "metrics.jsonl", "checkpoints"])
def test_resume_refuses_a_run_file_replaced_by_a_symlink(trained_run, prepared_tiny, tmp_path, name):
    """log.txt / metrics.jsonl were appended through a link (changing a user's file outside the run);
    checkpoints/ through a link received new weights and had its state folders pruned."""
    run = _copy_run(trained_run, tmp_path)
    outside = tmp_path / f"outside-{name}"
    if not (run / name).exists():
        (run / name).write_text("the user's own text\n")
    (run / name).rename(outside)
    (run / name).symlink_to(outside)
    before_run, before_outside = tree_digest(run), tree_digest(outside)
    result = _resume(run, prepared_tiny)
    assert_input_error(result, name, "symbolic link")
    assert tree_digest(run) == before_run and tree_digest(outside) == before_outside


def test_resume_refuses_a_metrics_fifo_instead_of_hanging(trained_run, prepared_tiny, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")
    assert_input_error(_resume(run, prepared_tiny), "metrics.jsonl", "not a regular file")


def test_jsonl_reader_is_bounded_and_skips_overlong_and_odd_lines(tmp_path):
    from personsearch.io import iter_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n' + b"x" * (3 << 20) + b'\n{"step": "x"}\n[1]\n{"step": 2}')
    assert [row["step"] for row in iter_jsonl(path)] == [1, "x", 2]
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        list(iter_jsonl(fifo))


def test_forget_metrics_tolerates_a_non_numeric_step(tmp_path):
    """A hand-edited metrics line with "step": "x" used to raise ValueError at resume."""
    from personsearch.engine.train import _forget_metrics_after

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": "x"}\n{"step": 9}\n{"step": 2')
    _forget_metrics_after(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": "x"}\n'


# ------------------------------------------------------------------ two trainers, one name


def test_two_new_runs_racing_for_one_name_never_delete_the_winner(tiny_settings, tmp_path, monkeypatch):
    """Both used to pass the 'already exists' check, both wrote the folder, then the one refused by
    the lock removed the folder as 'its own failed run' while the other was training in it."""
    from personsearch import runs
    from personsearch.runs import lifecycle

    barrier = threading.Barrier(2, timeout=20)
    calls = {"n": 0}
    real = lifecycle.ensure_writable

    def both_checked(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] <= 2:
            barrier.wait()  # both racers are past the existence check before either writes
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "ensure_writable", both_checked)
    run_dir = tmp_path / "runs" / "same"
    loser_done = threading.Event()
    outcome: dict[str, object] = {}

    def racer(label: str) -> None:
        try:
            with runs.held_run(tiny_settings, run_dir, new=True):
                outcome["winner"] = label
                loser_done.wait(20)
                outcome["winner_sees"] = sorted(p.name for p in run_dir.iterdir())
        except InputError as exc:
            outcome["loser"] = exc.message
            loser_done.set()

    threads = [threading.Thread(target=racer, args=(label,)) for label in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert "winner" in outcome and "in use" in str(outcome["loser"]), outcome
    assert {"config.yaml", ".personsearch.json", "checkpoints"} <= set(outcome["winner_sees"]), outcome  # type: ignore[arg-type]
    runs.close_run_log()


# ------------------------------------------------------------------ outputs inside inputs


@pytest.mark.parametrize("where", ["prepared", "raw"])
def test_run_inside_its_inputs_is_refused(prepared_tiny, synthetic_raw, tmp_path, where):
    """runtime.output_dir inside the prepared dataset (a later `prepare --out` replaces it, run and
    all) or inside the raw image folder used to be accepted."""
    inside = (prepared_tiny if where == "prepared" else synthetic_raw) / "runs"
    before = tree_digest(prepared_tiny), tree_digest(synthetic_raw)
    result = invoke("train", "--data", prepared_tiny, *tiny_sets(f"runtime.output_dir={inside}"),
                    "--name", "x", "--max-steps", "1")
    assert_input_error(result, "inside the", "inputs")
    assert not inside.exists() and (tree_digest(prepared_tiny), tree_digest(synthetic_raw)) == before


# ------------------------------------------------------------------ devices and process counts


@pytest.mark.parametrize("device", ["meta", "xla", "mps"])
def test_devices_torch_knows_but_we_do_not_train_on(prepared_tiny, tmp_path, device):
    """`--device meta` (or mps without MPS) used to exit 1 with 'unexpected RuntimeError'."""
    pytest.importorskip("torch")
    import torch

    if device == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = invoke("train", "--data", prepared_tiny, *tiny_sets(f"runtime.output_dir={tmp_path / 'runs'}"),
                    "--name", "d", "--device", device)
    assert_input_error(result, device)
    assert not (tmp_path / "runs" / "d").exists()


@pytest.mark.parametrize("nproc", ["0", "-1", "100000"])
def test_nproc_out_of_range_is_refused(prepared_tiny, tmp_path, nproc):
    """0 and -1 were ignored (one process trained); 100000 launched torchrun with 100000 workers."""
    result = invoke("train", "--data", prepared_tiny, *tiny_sets(f"runtime.output_dir={tmp_path / 'runs'}"),
                    "--name", "n", "--nproc", nproc, "--device", "cpu")
    assert_input_error(result, "--nproc")
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ checkpoints leave no temp links


def test_training_leaves_no_temporary_weight_links(trained_run):
    """Re-linking best.safetensors to the file it already was left `.best.safetensors.PID.tmp`
    behind (a rename between two links of one file does nothing), keeping pruned weights on disk."""
    leftovers = [p.name for p in (trained_run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_link_or_copy_onto_the_same_file(tmp_path):
    from personsearch.engine.state import _link_or_copy

    source = tmp_path / "a.safetensors"
    source.write_bytes(b"w")
    target = tmp_path / "b.safetensors"
    _link_or_copy(source, target)
    _link_or_copy(source, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


# ------------------------------------------------------------------ demo folders with links inside


@pytest.mark.parametrize("entry", ["run/checkpoints", "data"])
def test_demo_rerun_refuses_its_folders_replaced_by_links(tmp_path, entry):
    """A rerun cleared and rewrote run/checkpoints (or drew data/) through a link into the user's
    folder; it is refused before anything is drawn or trained."""
    out = tmp_path / "demo"
    (out / "run").mkdir(parents=True)
    write_owner_marker(out, "demo")
    user = tmp_path / "user"
    user.mkdir()
    (user / "mine.txt").write_text("keep")
    (out / entry).symlink_to(user)
    result = invoke("demo", "--out", out, "--ids", "8", "--minutes", "0.05", "--workers", "0", "--json")
    assert_input_error(result, entry.split("/")[-1], "symbolic link")
    assert result.stdout == ""
    assert sorted(p.name for p in user.iterdir()) == ["mine.txt"]
