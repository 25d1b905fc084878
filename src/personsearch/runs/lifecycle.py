"""Starting, resuming and rolling back a run: its folder is created under its lock, its log
opened, and a run that fails before its first checkpoint leaves nothing behind."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from personsearch.errors import InputError
from personsearch.io import (
    RunLock,
    atomic_write_text,
    ensure_writable,
    safe_component,
    write_owner_marker,
)
from personsearch.io.recorded import RELATIVE, recorded_path, relative_fault
from personsearch.runs.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOCK_FILE,
    LOG_FILE,
    LOGGER_NAME,
    METRICS_FILE,
    RUN_KIND,
    check_run_files,
    is_run,
)
from personsearch.settings import Settings, settings_file_text


def new_run_name(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def plan_run(*, config: str | Path | None = None, sets: Sequence[str] = (),
             overrides: dict[str, Any] | None = None, resume: str | Path | None = None,
             name: str | None = None) -> tuple[Settings, Path]:
    """The settings and the folder of a run about to start or continue, checked before anything
    is written: a resumed run keeps its own settings with the given changes on top (training
    refuses the ones that cannot change); a new run gets ``name`` (one safe folder name) or one
    made from the config file's name and the time. Budgets (``BUDGET_KEYS``) come from this call
    only: they are never saved with the run, so a resume trains on unless it is given one again."""
    from personsearch.runs.layout import load_run_settings
    from personsearch.settings import resolve_settings

    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise InputError(f"run folder not found: {run_dir}")
        if not is_run(run_dir):
            raise InputError(f"{run_dir} is not a run folder (no config.yaml written by `personsearch train`)",
                             hint="pass the folder `personsearch train` created under runtime.output_dir")
        # The saved settings without budgets (a run saved before budgets were left out may hold one):
        # only the budgets given now apply.
        saved = without_budgets(load_run_settings(run_dir))
        settings = resolve_settings(config=config, sets=sets, overrides=overrides, base=saved)
    else:
        settings = resolve_settings(config=config, sets=sets, overrides=overrides)
        if name is None and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
            raise InputError("under torchrun every process needs the same run: pass --name")
        run_name = safe_component(name) if name is not None else new_run_name(_config_stem(config))
        run_dir = Path(settings.runtime.output_dir) / run_name
    if settings.data.root is None:
        raise InputError("no training data: pass --data PREPARED (a folder written by `personsearch prepare`)")
    check_outside_inputs(run_dir, settings.data.root)  # before the run folder is made, not after
    return settings, run_dir


def _config_stem(config: object) -> str:
    """A default run name from the config file's name, reduced to safe characters."""
    import re

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(config)).stem).strip(".-") if config else ""
    return stem[:64] or "run"


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
        if any(child.name != LOCK_FILE for child in run_dir.iterdir()):  # our own lock: held by the caller
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
    save_run_settings(run_dir, settings)
    return run_dir


def save_run_settings(run_dir: str | Path, settings: Settings) -> None:
    """Save ``settings`` as the run's ``config.yaml``, its dataset (``data.root``) recorded relative
    to the run folder (``settings_file_text``), so a run and its data moved or copied together keep
    working; ``load_run_settings`` resolves it against the run folder again. Budgets are left out
    (``without_budgets``)."""
    atomic_write_text(Path(run_dir) / CONFIG_FILE, settings_file_text(without_budgets(settings), run_dir))


#: Settings that bound one invocation of training, however given (an option, --set, a config file,
#: the environment): they apply to that invocation only and are never saved in a run's config.yaml,
#: so `train --resume RUN` after a `--max-steps` stop trains on to the last epoch.
BUDGET_KEYS = ("train.max_steps", "train.max_minutes")


def without_budgets(settings: Settings) -> Settings:
    """``settings`` with no budget (``BUDGET_KEYS`` unset): the form a run saves."""
    budgets = {key.split(".", 1)[1]: None for key in BUDGET_KEYS}
    return settings.model_copy(update={"train": settings.train.model_copy(update=budgets)})


@contextlib.contextmanager
def held_run(settings: Settings, run_dir: str | Path, new: bool, writer: bool = True) -> Iterator[Path]:
    """Create (``new``) and lock a run for training; on any failure before its first checkpoint,
    Ctrl-C included, remove everything this call created, so the same name can be used again.

    The lock is taken before anything is written, and only a caller that won it ever removes
    anything: two ``train --name same`` started together cannot delete each other's run. A run
    folder ``create_run`` made that has not trained yet is started in place (and kept on failure).
    ``new=False`` continues a run: it must be one of ours. ``writer`` is False on the other ranks
    of a distributed run: they neither create nor lock.
    """
    run_dir = Path(run_dir)
    if not writer:
        yield run_dir
        return
    if not new and not (run_dir.is_dir() and is_run(run_dir)):
        raise InputError(f"{run_dir} is not a run folder (no config.yaml written by `personsearch train`)",
                         hint="pass the folder `personsearch train` created under runtime.output_dir")
    created = new and _unstarted_run(run_dir)  # made by create_run: the caller's, never removed here
    fresh = new and not created
    existed = run_dir.is_dir()  # an empty folder the user made: emptied again on failure, kept
    made = _missing_ancestors(run_dir.parent)  # parents this run creates, removed with it on failure
    if fresh:
        check_new_run_dir(run_dir)  # refused here, before anything (the lock included) is created
        ensure_writable(run_dir, option="run folder")
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except BaseException:
        if fresh and not existed:
            _remove_if_empty([run_dir, *made])
        raise
    try:
        if fresh:
            check_new_run_dir(run_dir)  # again, under the lock: another process may have won the name
        else:
            check_run_files(run_dir)
    except BaseException:  # refused: what is there now is not ours to remove
        lock.release()
        if fresh and not existed:
            _remove_if_empty([run_dir, *made])
        raise
    try:
        if new:  # a run made by create_run gets the settings it now trains with
            create_run(settings, name=run_dir.name, output_dir=run_dir.parent, exist_ok=created)
            setup_logging(run_dir)  # a resumed run's log is opened once its checks pass
        yield run_dir
    except BaseException:
        if fresh and not _has_checkpoint(run_dir):
            close_run_log()
            _remove_new_run(run_dir, existed, made, lock)
        raise
    finally:
        lock.release()
        close_run_log()


def _unstarted_run(run_dir: Path) -> bool:
    """A run folder of ours that ``create_run`` made and nothing has trained in yet."""
    return (run_dir.is_dir() and not run_dir.is_symlink() and is_run(run_dir) and not _has_checkpoint(run_dir)
            and not os.path.lexists(run_dir / METRICS_FILE))


def check_new_run_dir(run_dir: Path) -> None:
    """The checks ``create_run`` makes, without creating anything."""
    if not (run_dir.exists() or run_dir.is_symlink()):
        return
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise InputError(f"run folder {run_dir} exists and is not a folder", hint="choose another --name")
    if any(child.name != LOCK_FILE for child in run_dir.iterdir()):
        raise InputError(f"run folder {run_dir} already exists",
                         hint="choose another --name, or continue it with --resume")


def check_outside_inputs(run_dir: str | Path, data_root: str | Path | None, raw_root: str | Path | None = None) -> None:
    """A run must not land inside its prepared dataset or the raw image folder (a later `prepare`
    would replace the folder and the run with it; the inputs would change), nor contain them."""
    target = Path(run_dir).resolve()
    if raw_root is None and data_root is not None:
        raw_root = _manifest_raw_root(Path(data_root))
    for what, root in (("prepared dataset", data_root), ("raw image folder", raw_root)):
        if root is None:
            continue
        source = Path(root).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise InputError(
                f"run folder {run_dir} {'lies inside' if source in target.parents else 'overlaps'} the {what} "
                f"{root}; training never writes into its inputs",
                hint="choose another runtime.output_dir (e.g. runs/)",
            )


def _manifest_raw_root(data_root: Path) -> str | None:
    """The raw image folder a prepared dataset names (a small, bounded read; None when unreadable):
    its relative form first where that exists, as ``PreparedDataset`` reads it (``io.recorded``)."""
    import json

    path = data_root / "manifest.json"

    def field(head: str, name: str) -> Any:
        marker = head.find(f'"{name}"')
        return None if marker < 0 else json.JSONDecoder().raw_decode(head[head.index(":", marker) + 1:].lstrip())[0]

    try:
        if not path.is_file() or path.stat().st_size > (64 << 20):
            return None
        with open(path, "rb") as handle:
            head = handle.read(1 << 16).decode("utf-8", errors="replace")
        value, relative = field(head, "raw_root"), field(head, RELATIVE)  # the first "raw_root" is the absolute one
    except (OSError, ValueError):
        return None
    if not isinstance(value, str) or not os.path.isabs(value) or "\x00" in value:
        return None
    moved = relative.get("raw_root") if isinstance(relative, dict) else None
    return str(recorded_path(value, moved if relative_fault(moved) is None else None, data_root))


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()  # only while empty
        except OSError:
            break


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


def _remove_new_run(run_dir: Path, existed: bool, made: list[Path], lock: RunLock) -> None:
    """Remove what a refused new run wrote, while still holding its lock (the lock file last), so a
    process that takes the name meanwhile never loses its files."""
    for child in list(run_dir.iterdir()):
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    lock.release()
    if not existed:
        _remove_if_empty([run_dir, *made])


class _RunLogHandler(logging.FileHandler):
    """A run's log.txt; only these are ever detached here (a caller's own handlers stay)."""


def close_run_log() -> None:
    """Detach and close the run's log.txt handler (before its folder is removed, or when done)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if isinstance(handler, _RunLogHandler):
            logger.removeHandler(handler)
            handler.close()


def setup_logging(run_dir: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the library's log records to ``<run>/log.txt`` (the CLI adds a rich console handler)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(min(level, logging.INFO) if run_dir is not None else level)
    if run_dir is not None:
        path = Path(run_dir) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
            check_run_files(run_dir)  # log.txt a link or special file: FileHandler would follow it
        close_run_log()
        handler = _RunLogHandler(path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    return logger
