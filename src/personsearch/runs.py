"""Run folders: ``runs/<name>/`` with the resolved ``config.yaml``, ``metrics.jsonl``, ``log.txt``
and ``checkpoints/``; plus the helpers every verb shares to find, log to and seed a run."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from personsearch.errors import InputError
from personsearch.io import (
    RunLock,
    atomic_write_text,
    ensure_writable,
    owner_kind,
    safe_component,
    write_owner_marker,
)
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


@contextlib.contextmanager
def held_run(settings: Settings, run_dir: str | Path, new: bool, writer: bool = True) -> Iterator[Path]:
    """Create (``new``) and lock a run for training; on any failure before its first checkpoint,
    Ctrl-C included, remove everything this call created, so the same name can be used again.

    ``writer`` is False on the other ranks of a distributed run: they neither create nor lock.
    """
    run_dir = Path(run_dir)
    if not writer:
        yield run_dir
        return
    existed = run_dir.is_dir()  # an empty folder the user made: emptied again on failure, kept
    made = _missing_ancestors(run_dir.parent)  # parents this run creates, removed with it on failure
    if new:
        create_run(settings, name=run_dir.name, output_dir=run_dir.parent)
    lock = RunLock(run_dir)
    try:
        lock.acquire()
        if new:
            setup_logging(run_dir)  # a resumed run's log is opened once its checks pass
        yield run_dir
    except BaseException:
        if new and not _has_checkpoint(run_dir):
            close_run_log()
            lock.release()
            _remove_new_run(run_dir, existed, made)
        raise
    finally:
        lock.release()
        close_run_log()


def _missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    missing = []
    folder = folder.absolute()
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _has_checkpoint(run_dir: Path) -> bool:
    folder = run_dir / CHECKPOINT_DIR
    try:
        return folder.is_dir() and any(not child.name.startswith(".") for child in folder.iterdir())
    except OSError:
        return True  # cannot tell: keep the folder


def _remove_new_run(run_dir: Path, existed: bool, made: list[Path]) -> None:
    if existed:
        for child in run_dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in made:
        try:
            parent.rmdir()  # only while empty
        except OSError:
            break


def close_run_log() -> None:
    """Detach and close the run's log.txt handler (before its folder is removed, or when done)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()


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
