"""What a run folder holds and how one is found: the file names, locating a run (ours or IRRA's)
from any path inside it, reading its settings once, its weights and its metrics log.

    runs/<name>/
        .personsearch.json   the owner marker (kind "run")
        config.yaml          the resolved settings the run was trained with
        metrics.jsonl        one JSON line per logged step, evaluation and ``eval`` call
        log.txt              the readable log
        checkpoints/         best/last weights with their records, state-<step>/ folders
        index/               a gallery index exported with this run (``query`` finds it)
        .lock                held while a process writes the run

An IRRA run folder holds ``configs.yaml`` and ``best.pth`` instead.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from personsearch.errors import InputError
from personsearch.io import append_line, owner_kind
from personsearch.model.weights_trust import CHECKPOINT_DIR, run_weights
from personsearch.settings import SETTINGS_FILE, Settings, resolve_settings

LOGGER_NAME = "personsearch"
CONFIG_FILE = SETTINGS_FILE
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "log.txt"
LOCK_FILE = ".lock"
INDEX_DIR = "index"
RUN_KIND = "run"
DEMO_KIND = "demo"  # a demo folder: its runs (run/, run-random/, run-attention/) are found like any other
IRRA_CONFIG = "configs.yaml"
IRRA_WEIGHTS = ("best.pth", "last.pth")

__all__ = [
    "CHECKPOINT_DIR", "CONFIG_FILE", "DEMO_KIND", "INDEX_DIR", "IRRA_CONFIG", "IRRA_WEIGHTS", "LOCK_FILE",
    "LOGGER_NAME",
    "LOG_FILE", "METRICS_FILE", "RUN_KIND", "append_metrics", "check_run_files", "checkpoint_dir", "find_run",
    "is_irra_run", "is_run", "latest_run", "load_run_settings", "read_weights_meta",
]


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def is_run(path: str | Path) -> bool:
    """A run folder of ours: marked as one, or (runs written before markers) holding config.yaml."""
    path = Path(path)
    kind = owner_kind(path)
    return kind == RUN_KIND or (kind is None and (path / CONFIG_FILE).is_file())


def is_irra_run(path: str | Path) -> bool:
    """A folder written by IRRA's own code (its ``configs.yaml``, no settings of ours)."""
    path = Path(path)
    return path.is_dir() and (path / IRRA_CONFIG).is_file() and not (path / CONFIG_FILE).is_file()


def find_run(path: str | Path) -> Path | None:
    """The run folder ``path`` is, or lies in (a checkpoint, ``checkpoints/``, a state folder)."""
    path = Path(path)
    for candidate in (path, path.parent, path.parent.parent):
        if is_run(candidate):
            return candidate
    return None


def latest_run(output_dir: str | Path = "runs", require: str | None = None) -> Path | None:
    """The most recently modified run under ``output_dir`` (optionally one containing ``require``);
    the runs inside a demo folder there (``runs/demo/run``) count too."""
    parent = Path(output_dir)
    if not parent.is_dir():
        return None
    candidates = []
    for child in parent.iterdir():
        if not child.is_dir() or child.is_symlink():
            continue
        if is_run(child):
            candidates.append(child)
        elif owner_kind(child) == DEMO_KIND:
            candidates += [p for p in child.iterdir() if p.is_dir() and not p.is_symlink() and is_run(p)]
    if require is not None:
        candidates = [p for p in candidates if (p / require).exists()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p / CONFIG_FILE).stat().st_mtime)


def load_run_settings(run_dir: str | Path) -> Settings:
    """A run's saved settings (every verb that takes a run starts here)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{run_dir} has no {CONFIG_FILE}; is it a run folder made by `personsearch train`?")
    return resolve_settings(config=path, environ={})


def read_weights_meta(run_dir: str | Path, which: str = "best") -> tuple[Path, dict[str, Any]]:
    """The weights file of a run (``best`` falling back to ``last`` when the run has no best yet) and
    its record, the weights verified against the sha256 the record holds."""
    folder = checkpoint_dir(run_dir)
    for tag in (which, "last") if which == "best" else (which,):
        found = run_weights(folder, tag, required=True)
        if found is not None:
            return found
    raise InputError(f"run {run_dir} has no weights yet (no {which}.safetensors in {folder})",
                     hint="train it first with `personsearch train`, or pass a run that finished an epoch")


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """One line of the run's ``metrics.jsonl`` (durable before this returns)."""
    append_line(Path(run_dir) / METRICS_FILE, json.dumps(record))


def check_run_files(run_dir: str | Path) -> None:
    """Refuse a run whose own files were replaced by links or special files: training appends to
    ``log.txt`` and ``metrics.jsonl`` and writes under ``checkpoints/`` in place, so a symlink there
    would change a file outside the run, and a FIFO would block forever."""
    run_dir = Path(run_dir)
    for name, want_dir in ((CONFIG_FILE, False), (METRICS_FILE, False), (LOG_FILE, False),
                           (CHECKPOINT_DIR, True)):
        path = run_dir / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        if stat.S_ISLNK(mode):
            kind = "a symbolic link"
        elif want_dir and not stat.S_ISDIR(mode):
            kind = "not a folder"
        elif not want_dir and not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, device or socket)"
        else:
            continue
        raise InputError(
            f"{path} is {kind}: this run's own {'folder' if want_dir else 'file'} was replaced, and personsearch "
            "never writes through a link or into a special file",
            hint=f"put the run's {name} back (or move that entry away), then run again; nothing was changed",
        )
