"""Two writers of one run or index: the second is refused with the holder's pid; a lock left by a
dead process is taken over."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from tests.helpers import tree_digest

from personsearch.errors import InputError
from personsearch.io import RunLock

from ._support import assert_input_error, invoke

pytestmark = pytest.mark.faults


@pytest.fixture()
def live_pid():
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield holder.pid
    holder.kill()
    holder.wait()


@pytest.fixture()
def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_second_writer_is_refused_with_the_holders_pid(tmp_path, live_pid):
    (tmp_path / ".lock").write_text(str(live_pid))
    with pytest.raises(InputError, match=f"process {live_pid}"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == str(live_pid)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, dead_pid):
    (tmp_path / ".lock").write_text(str(dead_pid))
    with RunLock(tmp_path) as lock:
        assert lock.path.read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("content", ["", "not a pid", "-5"])
def test_unreadable_lock_file_is_treated_as_stale(tmp_path, content):
    (tmp_path / ".lock").write_text(content)
    with RunLock(tmp_path) as lock:
        assert lock.path.read_text() == str(os.getpid())


_CONTENDER = """
import sys, time
from personsearch.errors import InputError
from personsearch.io import RunLock
lock = RunLock(sys.argv[1])
deadline = float(sys.argv[2])
while time.time() < deadline:
    pass
try:
    lock.acquire()
except InputError:
    print("refused"); sys.exit(0)
print("held", flush=True)
time.sleep(1.5)
lock.release()
"""


@pytest.mark.parametrize("start", ["fresh", "stale"])
def test_racing_processes_get_the_lock_one_at_a_time(tmp_path, dead_pid, start):
    if start == "stale":
        (tmp_path / ".lock").write_text(str(dead_pid))
    deadline = time.time() + 2.0
    procs = [
        subprocess.Popen([sys.executable, "-c", _CONTENDER, str(tmp_path), str(deadline)],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outputs) == ["held", "refused", "refused", "refused"], outputs


def test_train_refuses_a_run_another_process_is_writing(trained_run, tmp_path, live_pid):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / ".lock").write_text(str(live_pid))
    before = tree_digest(run)
    assert_input_error(invoke("--quiet", "train", "--resume", run), "in use", str(live_pid))
    assert tree_digest(run) == before


def test_train_takes_over_a_stale_run_lock(trained_run, tmp_path, dead_pid):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / ".lock").write_text(str(dead_pid))
    result = invoke("--quiet", "train", "--resume", run, "--max-steps", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 3
    assert not (run / ".lock").exists()


def test_index_append_refused_while_another_process_writes(tmp_path, live_pid):
    from personsearch.retrieval.index import GalleryIndex, append_to_index, write_index

    rows = np.eye(4, 8, dtype=np.float32) + 0.1
    meta = [{"path": f"{i}.jpg", "pid": i, "size": 1, "mtime_ns": 1} for i in range(4)]
    out = tmp_path / "index"
    write_index(out, rows, meta, "model-a", tmp_path)
    (out / ".lock").write_text(str(live_pid))
    before = tree_digest(out)
    more = [{"path": f"x{i}.jpg", "pid": i, "size": 1, "mtime_ns": 1} for i in range(4)]
    with pytest.raises(InputError, match=str(live_pid)):
        append_to_index(out, rows, more, "model-a")
    assert tree_digest(out) == before
    assert len(GalleryIndex.open(out)) == 4
