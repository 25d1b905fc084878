"""Helpers of the fault-injection suite: the CLI run in-process or as a process, and the check of the
error promise (tree hashes to prove inputs untouched are ``tests.helpers.tree_digest``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import TINY_SETS
from typer.testing import CliRunner

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str):  # noqa: ANN201
    """Run the CLI in-process (stdout and stderr kept apart)."""
    from personsearch.cli.app import app

    return runner.invoke(app, [str(arg) for arg in args])


def assert_input_error(result, *words: str, code: int = 2) -> str:  # noqa: ANN001
    """The error promise: the documented exit code, one clear message naming the culprit, no traceback."""
    text = result.output  # stdout and stderr interleaved
    assert result.exit_code == code, f"exit {result.exit_code} != {code}:\n{text}\n{result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text, text
    assert "error:" in text, text
    flat = " ".join(text.split())
    for word in words:
        assert word.lower() in flat.lower(), f"{word!r} not in message:\n{text}"
    return text


def cli_process(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """The CLI as a separate process (for SIGKILL cases)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "personsearch", *map(str, args)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def tiny_sets(*extra: str) -> list[str]:
    out: list[str] = []
    for item in [*TINY_SETS, *extra]:
        out += ["--set", item]
    return out


def raw_entries(raw: Path) -> list[dict]:
    """The annotation entries of a CUHK-PEDES-layout raw dataset."""
    import json

    return json.loads((raw / "reid_raw.json").read_text())
