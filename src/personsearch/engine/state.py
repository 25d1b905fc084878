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
pickle: loading never executes code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from personsearch.errors import InputError
from personsearch.io import atomic_directory, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

FORMAT = "personsearch-checkpoint"
FORMAT_VERSION = 1
_STATE_DIR = re.compile(r"^state-(\d{8})$")


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
        return _load_tensors(self.path / "model.safetensors")

    def optimizer_state(self, template: torch.optim.Optimizer) -> dict[str, Any]:
        return _optimizer_from_files(self.path, self.meta["optimizer"], template)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise InputError(f"checkpoint file missing: {path}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"checkpoint file {path} is corrupt or truncated ({exc})") from None


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
    tensors = _load_tensors(folder / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
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
    step = int(meta["step"])
    target = folder / f"state-{step:08d}"
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(target) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        if optimizer is not None:
            tensors, described = _optimizer_to_files(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            meta["optimizer"] = described
        (tmp / "state.json").write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    public = {k: v for k, v in meta.items() if k != "optimizer"}
    public["state"] = target.name
    public["weights_sha256"] = sha256_file(target / "model.safetensors")
    _link_or_copy(target / "model.safetensors", folder / "last.safetensors")
    atomic_write_json(folder / "last.json", json.loads(json.dumps(public, default=_json_default)))
    if best:
        _link_or_copy(target / "model.safetensors", folder / "best.safetensors")
        atomic_write_json(folder / "best.json", json.loads(json.dumps(public, default=_json_default)))
    _prune(folder, keep=keep)
    return Checkpoint(target, meta)


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


def load_training_state(run_dir: str | Path) -> Checkpoint | None:
    """The newest complete state folder of a run, or None when it has none yet."""
    for candidate in reversed(_state_folders(checkpoint_dir(run_dir))):
        meta_path = candidate / "state.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring incomplete checkpoint %s", candidate)
            continue
        version = int(meta.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise InputError(f"checkpoint {candidate} has format version {version}; this personsearch reads "
                             f"version {FORMAT_VERSION}", hint="upgrade personsearch")
        return Checkpoint(candidate, meta)
    return None


def read_weights_meta(run_dir: str | Path, which: str = "best") -> tuple[Path, dict[str, Any]]:
    """The weights file of a run (``best`` falling back to ``last``) and its metadata."""
    folder = checkpoint_dir(run_dir)
    for tag in (which, "last") if which == "best" else (which,):
        weights, meta_path = folder / f"{tag}.safetensors", folder / f"{tag}.json"
        if weights.is_file() and meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError as exc:
                raise InputError(f"{meta_path} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
            version = int(meta.get("format_version", 0))
            if version > FORMAT_VERSION:
                raise InputError(f"{weights} has checkpoint format version {version}; this personsearch reads "
                                 f"version {FORMAT_VERSION}", hint="upgrade personsearch")
            return weights, meta
    raise InputError(f"run {run_dir} has no weights yet (no {which}.safetensors in {folder})",
                     hint="train it first with `personsearch train`, or pass a run that finished an epoch")
