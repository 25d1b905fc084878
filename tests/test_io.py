"""Atomic writes, folder swaps and run locks keep earlier good output whatever happens mid-write."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from personsearch.errors import InputError, RunFailure
from personsearch.io import (
    RunLock,
    append_line,
    atomic_directory,
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert target.read_text().strip().endswith("}") and '"x": 2' in target.read_text()
    assert _leftovers(tmp_path) == []


def test_failure_mid_write_keeps_previous_version(tmp_path):
    target = tmp_path / "w.txt"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w", encoding="utf-8") as handle:
            handle.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "good"
    assert _leftovers(tmp_path) == []


def test_disk_full_is_a_clear_failure(tmp_path, monkeypatch):
    target = tmp_path / "w.bin"
    atomic_write_text(target, "good")

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RunFailure, match="disk full while writing"):
        atomic_write_text(target, "new content")
    monkeypatch.undo()
    assert target.read_text() == "good"
    assert _leftovers(tmp_path) == []


def test_atomic_directory_swaps_whole_folder(tmp_path):
    out = tmp_path / "prepared"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(KeyError):
        with atomic_directory(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise KeyError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with atomic_directory(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
    assert _leftovers(tmp_path) == []


def test_jsonl_skips_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    append_line(path, '{"a": 1}')
    append_line(path, '{"a": 2}')
    with open(path, "a") as handle:
        handle.write('{"a": 3')  # a crash mid-line
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_run_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(str(holder.pid))
        with pytest.raises(InputError, match=f"in use by process {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The holder is dead now: its lock is stale and is taken over.
    with RunLock(tmp_path) as lock:
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        assert lock.path.exists()
    assert not (tmp_path / ".lock").exists()


def test_outputs_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        import importlib

        import personsearch.io as io_module

        importlib.reload(io_module)
        io_module.atomic_write_text(tmp_path / "f.txt", "x")
        with io_module.atomic_directory(tmp_path / "d") as tmp:
            (tmp / "a").write_text("1")
        assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(mask)
