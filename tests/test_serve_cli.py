"""The ``serve`` verb as a user runs it: a real process that serves until Ctrl-C and exits 0 with
the port released; its help without the [serve] extra; clear refusals before anything loads."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.retrieval.export import export_run

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def served_index(trained_run: Path, synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve_cli")
    shutil.copytree(synthetic_raw / "imgs", folder / "imgs")
    export_run(trained_run, folder / "index", images=folder / "imgs", device="cpu")
    return folder / "index"


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-c", "from personsearch.cli.app import main; main()", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200", **(env or {})}, **kwargs)


def _wait_for_url(process: subprocess.Popen, timeout: float = 120) -> tuple[str, list[str]]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        lines.append(line)
        found = re.search(r"at (http://\S+/)", line)
        if found:
            return found.group(1), lines
    process.kill()
    raise AssertionError("the server never said where it listens:\n" + "".join(lines))


def test_serve_answers_until_ctrl_c_then_exits_0_and_frees_the_port(served_index):
    process = _cli("serve", "--index", str(served_index), "--host", "0.0.0.0", "--port", "0", "--device", "cpu")
    try:
        url, lines = _wait_for_url(process)
        assert any("warning" in line and "0.0.0.0" in line for line in lines), lines
        with urllib.request.urlopen(url + "api/health", timeout=30) as response:
            health = json.loads(response.read())
        assert health["status"] == "ok" and health["images"] > 0
        with urllib.request.urlopen(url + "api/search?q=a%20man&k=3", timeout=60) as response:
            assert len(json.loads(response.read())["results"]) == 3
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with socket.socket() as again:  # released: the same port can be bound again at once
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("0.0.0.0", port))


def test_serve_stops_cleanly_on_sigterm(served_index):
    process = _cli("serve", "--index", str(served_index), "--port", "0", "--device", "cpu")
    try:
        _wait_for_url(process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_port_in_use_is_one_clear_message(served_index):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--index", str(served_index), "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port}" in result.output and "in use" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, words", [
    (["--index", "/no/such/index"], "/no/such/index"),
    (["--host", "not a host name!"], "cannot listen"),
    (["--precision", "fp64"], "precision"),
])
def test_bad_options_are_refused_before_serving(served_index, args, words):
    full = ["serve", "--port", "0", *args] if "--index" in args else ["serve", "--index", str(served_index),
                                                                        "--port", "0", *args]
    result = runner.invoke(app, full)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output


BLOCK_SERVE = "import sys; [sys.modules.__setitem__(n, None) for n in ('fastapi', 'uvicorn', 'python_multipart')]; "


def test_help_works_without_the_serve_extra_and_the_verb_says_how_to_install_it(served_index):
    for args, code in ((["serve", "--help"], 0), (["serve", "--index", str(served_index)], 2)):
        done = subprocess.run(
            [sys.executable, "-c", BLOCK_SERVE + "from personsearch.cli.app import main; sys.argv[1:] = "
             + repr(args) + "; main()"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
            timeout=120)
        assert done.returncode == code, done.stderr
        if code == 0:
            assert "/api/search" in done.stdout
        else:
            assert "pip install 'personsearch[serve]'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_two_worker_processes_serve_the_same_answers(served_index):
    process = _cli("serve", "--index", str(served_index), "--port", "0", "--device", "cpu", "--workers", "2")
    try:
        url, _ = _wait_for_url(process)
        answers = set()
        deadline = time.monotonic() + 120
        while not answers:
            assert time.monotonic() < deadline, "the workers never answered"
            try:
                with urllib.request.urlopen(url + "api/search?q=a%20man&k=3", timeout=60) as response:
                    answers.add(response.read())
            except OSError:  # the workers are still loading the model
                time.sleep(0.5)
        for _ in range(8):
            with urllib.request.urlopen(url + "api/search?q=a%20man&k=3", timeout=60) as response:
                answers.add(response.read())
        assert len(answers) == 1
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
