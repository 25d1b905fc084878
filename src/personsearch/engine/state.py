"""Checkpoints of a run: weights in safetensors, metadata in JSON, training state for exact resume.

Layout under ``<run>/checkpoints/``::

    state-00001200/            one complete training state, written as a temp folder then renamed
        model.safetensors      the full model state dict (CLIP under ``base_model.``)
        optimizer.safetensors  optimizer tensors, keyed ``<param index>.<name>``
        state.json             epoch, step, metrics, scheduler/sampler state, optimizer scalars
    last.safetensors, last.json    the newest weights (a hard link into the newest state folder)
    best.safetensors, best.json    the weights with the best R1 so far

A state folder appears whole or not at all (rename), and ``last.json`` is replaced atomically after
it, so a SIGKILL at any moment leaves the previous complete checkpoint usable. Nothing here is a
pickle: loading never executes code. Every record holds the sha256 of its weights; weights that do
not match their record are refused (see :mod:`personsearch.model.weights_trust`), and a record
that cannot be read names itself and says the run is damaged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from personsearch.errors import InputError
from personsearch.io import atomic_directory, atomic_write_json, sha256_file
from personsearch.model.weights_trust import (
    FORMAT,
    FORMAT_VERSION,
    STATE_DIR,
    ensure_unchanged,
    file_sha256,
    load_safetensors,
    read_record,
)
from personsearch.runs import checkpoint_dir

log = logging.getLogger(__name__)

_STATE_DIR = STATE_DIR


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what every other output gets (safetensors writes 0600)


@dataclass
class Checkpoint:
    """What training needs to continue: where the state folder is and what it recorded."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def model_state(self) -> dict[str, torch.Tensor]:
        return _load_tensors(self.path / "model.safetensors", self.meta.get("weights_sha256"))

    def optimizer_state(self, template: torch.optim.Optimizer) -> dict[str, Any]:
        return _optimizer_from_files(self.path, self.meta["optimizer"], template)


def _load_tensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A state folder's tensors; checked against the sha256 its state.json recorded, when it did."""
    if not path.is_file():
        raise InputError(f"this run's checkpoint is damaged: {path} is missing",
                         hint="`personsearch train --resume RUN` needs a complete state folder; re-train")
    if expected_sha256 is not None and file_sha256(path)[0] != expected_sha256:
        raise InputError(f"{path} does not match what the run recorded in {path.parent / 'state.json'}: its "
                         "sha256 differs, so the file was replaced or damaged after training wrote it",
                         hint="restore the file, or start a new run with --name; nothing was loaded")
    tensors = load_safetensors(path)
    if expected_sha256 is not None:
        ensure_unchanged(path, expected_sha256)
    return tensors


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and plain values (JSON)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: v for k, v in group.items() if k != "names"} for group in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_files(folder: Path, described: dict[str, Any], template: torch.optim.Optimizer) -> dict:
    path = folder / "optimizer.safetensors"
    tensors = _load_tensors(path)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or not name or len(index) > 9:
            raise InputError(f"this run's checkpoint is damaged: {path} holds a tensor named {key[:80]!r}, "
                             "not <param index>.<name>", hint="re-train, or resume from an intact copy of the run")
        state.setdefault(int(index), {})[name] = value
    for index, values in described.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = described["param_groups"]
    current = template.state_dict()["param_groups"]
    mismatch = len(groups) != len(current) or any(
        len(a["params"]) != len(b["params"]) for a, b in zip(groups, current, strict=True)
    )
    if mismatch:
        raise InputError("the checkpoint's optimizer does not match this model's parameter groups",
                         hint="resume with the same settings the run was started with")
    for saved, live in zip(groups, current, strict=True):
        if "names" in live:
            saved["names"] = live["names"]
    return {"state": state, "param_groups": groups}


def _link_or_copy(source: Path, target: Path) -> None:
    """Point ``target`` at ``source``'s content atomically. Already the same file: nothing to do
    (a rename between two links of one file is a no-op that would leave the temp link behind,
    keeping pruned weights alive on disk)."""
    try:
        if target.is_file() and os.path.samefile(source, target):
            return
    except OSError:
        pass
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(tmp, target)


def save_training_state(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
    best: bool = False,
    keep: int = 1,
) -> Checkpoint:
    """Write a complete state folder, then point ``last`` (and ``best`` if asked) at its weights."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _complete_publication(folder)
    step = int(meta["step"])
    target = folder / f"state-{step:08d}"
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(target) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        os.chmod(tmp / "model.safetensors", _FILE_MODE)
        meta["weights_sha256"] = sha256_file(tmp / "model.safetensors")
        if optimizer is not None:
            tensors, described = _optimizer_to_files(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            os.chmod(tmp / "optimizer.safetensors", _FILE_MODE)
            meta["optimizer"] = described
        (tmp / "state.json").write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    public = {k: v for k, v in meta.items() if k != "optimizer"}
    public["state"] = target.name
    # The record goes first: killed between the two, the record names this state folder, whose
    # weights carry the recorded hash; readers refuse the pair and the next save completes it
    # (_complete_publication). The other order would leave weights no record describes.
    atomic_write_json(folder / "last.json", json.loads(json.dumps(public, default=_json_default)))
    _link_or_copy(target / "model.safetensors", folder / "last.safetensors")
    if best:
        atomic_write_json(folder / "best.json", json.loads(json.dumps(public, default=_json_default)))
        _link_or_copy(target / "model.safetensors", folder / "best.safetensors")
    _prune(folder, keep=keep)
    return Checkpoint(target, meta)


def _complete_publication(folder: Path) -> None:
    """Finish what a killed save left half done: a record (``best.json``/``last.json``) naming a state
    folder whose weights it describes, while ``best``/``last.safetensors`` are still the old ones.
    Readers refuse such a pair; the trainer, which may write, links the recorded weights."""
    for tag in ("last", "best"):
        record, weights = folder / f"{tag}.json", folder / f"{tag}.safetensors"
        if not record.is_file():
            continue
        try:
            meta = read_record(record)
        except InputError:
            continue  # damaged: this save replaces last; a damaged best stays named until replaced
        source = folder / str(meta.get("state")) / "model.safetensors"
        if not meta.get("state") or not source.is_file():
            continue
        try:
            if weights.is_file() and os.path.samefile(weights, source):
                continue
            if weights.is_file() and file_sha256(weights)[0] == meta["weights_sha256"]:
                continue
            if file_sha256(source)[0] == meta["weights_sha256"]:
                log.warning("completing an interrupted save: linking %s to %s", weights, source)
                _link_or_copy(source, weights)
        except OSError:
            continue


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _state_folders(folder: Path) -> list[Path]:
    found = [p for p in folder.iterdir() if p.is_dir() and _STATE_DIR.match(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def _prune(folder: Path, keep: int) -> None:
    for old in _state_folders(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stray in folder.glob(".state-*"):  # temp folders of interrupted writes
        shutil.rmtree(stray, ignore_errors=True)
    for stray in folder.glob(".*.safetensors.*.tmp"):  # temp links of interrupted (or older) saves
        pid = stray.name.rsplit(".", 2)[-2]
        if stray.is_file() and not stray.is_symlink() and pid.isdigit() and (
                int(pid) == os.getpid() or not _alive(int(pid))):
            stray.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def load_training_state(run_dir: str | Path) -> Checkpoint | None:
    """The newest state folder of a run, its state.json checked; None when it has none yet.

    State folders appear whole (a rename), so an unreadable newest one is damage, not a write in
    progress: it is named, never silently skipped for an older one.
    """
    folders = _state_folders(checkpoint_dir(run_dir))
    if not folders:
        return None
    candidate = folders[-1]
    older = f"; or remove {candidate.name} to resume from {folders[-2].name}" if len(folders) > 1 else ""
    hint = f"restore {candidate} from a backup, or start a new run with --name{older}"
    meta_path = candidate / "state.json"
    if not meta_path.is_file():
        raise InputError(f"this run's checkpoint is damaged: {meta_path} is missing", hint=hint)
    try:
        meta = read_record(meta_path, need_sha=False)
        _check_state_meta(meta_path, meta, candidate)
    except InputError as exc:
        if exc.hint == "upgrade personsearch":  # a newer format is not damage
            raise
        raise InputError(exc.message, hint=hint) from None
    return Checkpoint(candidate, meta)


def _check_state_meta(path: Path, meta: dict[str, Any], folder: Path) -> None:
    """What resuming reads from state.json, type-checked (read_record checked the counters)."""
    def damaged(detail: str) -> InputError:
        return InputError(f"this run's checkpoint is damaged: {path} {detail}")

    for key in ("epoch", "step"):
        if key not in meta:
            raise damaged(f"lacks {key!r}")
    if not isinstance(meta.get("scheduler"), dict):
        raise damaged("lacks the scheduler state ('scheduler' is not a mapping)")
    optimizer = meta.get("optimizer")
    if optimizer is None:
        if (folder / "optimizer.safetensors").is_file():
            raise damaged("lacks the optimizer description for optimizer.safetensors")
        return
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    scalars = optimizer.get("scalars", {}) if isinstance(optimizer, dict) else None
    if (not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                 for g in groups)):
        raise damaged("has an optimizer description without param_groups")
    if not isinstance(scalars, dict) or not all(
        isinstance(k, str) and k.isdigit() and len(k) <= 9 and isinstance(v, dict) for k, v in scalars.items()
    ):
        raise damaged("has optimizer scalars that are not keyed by parameter index")


def record_evaluation(run_dir: str | Path, checkpoint: Checkpoint, metrics: dict[str, Any],
                      best_metrics: dict[str, Any], is_best: bool) -> None:
    """Add an evaluation to a checkpoint saved before it ran (training saves first, so a failed
    evaluation never costs trained weights): its ``state.json``, ``last.json`` and, when it is the
    best so far, ``best.safetensors``/``best.json``."""
    folder = checkpoint_dir(run_dir)
    meta = {**checkpoint.meta, "metrics": metrics, "best": best_metrics, "pending_eval": False}
    atomic_write_json(checkpoint.path / "state.json", json.loads(json.dumps(meta, default=_json_default)))
    checkpoint.meta = meta
    last_path = folder / "last.json"
    public = {k: v for k, v in meta.items() if k != "optimizer"}
    public["state"] = checkpoint.path.name
    try:
        previous = json.loads(last_path.read_text())
        if isinstance(previous, dict) and previous.get("state") == checkpoint.path.name:
            public["weights_sha256"] = previous.get("weights_sha256")
    except (OSError, ValueError):
        pass
    if not public.get("weights_sha256"):
        public["weights_sha256"] = sha256_file(checkpoint.path / "model.safetensors")
    public = json.loads(json.dumps(public, default=_json_default))
    atomic_write_json(last_path, public)
    if is_best:  # record first, as in save_training_state
        atomic_write_json(folder / "best.json", public)
        _link_or_copy(checkpoint.path / "model.safetensors", folder / "best.safetensors")
