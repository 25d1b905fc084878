"""Run folders: ``runs/<name>/`` with the resolved ``config.yaml``, ``metrics.jsonl``, ``log.txt``
and ``checkpoints/``; plus the helpers every verb shares to find, log to and seed a run."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

from personsearch.errors import InputError
from personsearch.io import atomic_write_text, ensure_writable, owner_kind, safe_component, write_owner_marker
from personsearch.settings import Settings

LOGGER_NAME = "personsearch"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "log.txt"
CHECKPOINT_DIR = "checkpoints"
RUN_KIND = "run"


def new_run_name(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run(settings: Settings, name: str | None = None, output_dir: str | Path | None = None,
               exist_ok: bool = False) -> Path:
    """Make ``<output_dir>/<name>/`` and save the resolved settings in it.

    ``name`` is one folder name (never a path), so a run cannot land outside ``output_dir``; an
    existing non-empty folder is reused only with ``exist_ok`` and only when it is a run of ours.
    """
    parent = Path(output_dir if output_dir is not None else settings.runtime.output_dir)
    run_dir = parent / safe_component(name or new_run_name())
    if run_dir.exists() or run_dir.is_symlink():
        if run_dir.is_symlink() or not run_dir.is_dir():
            raise InputError(f"run folder {run_dir} exists and is not a folder", hint="choose another --name")
        if any(run_dir.iterdir()):
            if not exist_ok:
                raise InputError(
                    f"run folder {run_dir} already exists",
                    hint="choose another --name, or continue it with --resume",
                )
            if not is_run(run_dir):
                raise InputError(
                    f"{run_dir} is a folder personsearch did not write as a run; refusing to reuse it",
                    hint="choose another name or output folder; nothing in it was changed",
                )
    ensure_writable(run_dir, option="run folder")
    (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    write_owner_marker(run_dir, RUN_KIND)
    atomic_write_text(run_dir / CONFIG_FILE, settings.to_yaml())
    return run_dir


def is_run(path: str | Path) -> bool:
    """A run folder of ours: marked as one, or (runs written before markers) holding config.yaml."""
    path = Path(path)
    kind = owner_kind(path)
    return kind == RUN_KIND or (kind is None and (path / CONFIG_FILE).is_file())


def latest_run(output_dir: str | Path = "runs", require: str | None = None) -> Path | None:
    """The most recently modified run under ``output_dir`` (optionally one containing ``require``)."""
    parent = Path(output_dir)
    if not parent.is_dir():
        return None
    candidates = [p for p in parent.iterdir() if p.is_dir() and is_run(p)]
    if require is not None:
        candidates = [p for p in candidates if (p / require).exists()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p / CONFIG_FILE).stat().st_mtime)


def setup_logging(run_dir: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the library's log records to ``<run>/log.txt`` (the CLI adds a rich console handler)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(min(level, logging.INFO) if run_dir is not None else level)
    if run_dir is not None:
        path = Path(run_dir) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    return logger


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (torch only if already imported or importable)."""
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
