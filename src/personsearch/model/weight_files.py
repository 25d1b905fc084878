"""One weights file to its content, whatever its format, without running anything it holds.

``.safetensors`` files have their header validated first (:mod:`personsearch.model.weights_trust`);
OpenAI's TorchScript archives give their tensors without their code running
(:mod:`personsearch.model.torchscript`); any other file is a pickle read with
``weights_only=True``, so one that would run code is refused, never executed. Only regular files
are read: a FIFO would hang the read and a device such as /dev/zero would fill memory without end.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch

from personsearch.errors import InputError
from personsearch.model.torchscript import is_torchscript, read_torchscript
from personsearch.model.weights_trust import load_safetensors

__all__ = ["read_weights_file"]


def read_weights_file(path: Path) -> Any:
    """The content of one weights file (tensors, or the dict a pickle holds); InputError names the file."""
    _ensure_regular(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if is_torchscript(path):
        return read_torchscript(path)
    return _read_pickle(path)


def _ensure_regular(path: Path) -> None:
    """Only a regular file is read as weights: a FIFO would hang the read and a device such as
    /dev/zero (or a link to it) would fill memory without end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"CLIP weights not found: {path} does not exist", hint="check the path") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise InputError(
            f"cannot read {path}: not a regular file (a FIFO, device or socket)",
            hint="pass a weights file (.safetensors, .pt, .pth, .bin), a run folder or a model name",
        )


def _read_pickle(path: Path) -> Any:
    """A plain state-dict pickle (IRRA's checkpoints, ``pytorch_model.bin``), tensors only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or "weights_only" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" (it references {found.group(1)})" if found else ""
            raise InputError(
                f"refusing to load {path}: the pickle holds code or objects beyond tensors{what}",
                hint="only plain state dicts are read; convert the file to .safetensors where you trust it",
            ) from None
        raise InputError(f"cannot read {path}: corrupt pickle ({text.splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"cannot read {path}: the file is truncated or corrupt ({first})",
            hint="copy or download it again",
        ) from None
