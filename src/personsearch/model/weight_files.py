"""One weights file to its content, whatever its format, without running anything it holds.

``.safetensors`` files have their header validated first (:mod:`personsearch.model.weights_trust`);
OpenAI's TorchScript archives give their tensors without their code running
(:mod:`personsearch.model.torchscript`); any other file is a pickle read with
``weights_only=True``, so one that would run code is refused, never executed. Only regular files
are read: a FIFO would hang the read and a device such as /dev/zero would fill memory without end.

A ``.safetensors`` file can also be read in part: its (validated) header says where each named
tensor lies, so with ``keep`` only the tensors it accepts are read, each straight into a tensor of
its own (a text query needs CLIP's text encoder, a third of the file); the others come back as
shape-only tensors on the ``meta`` device, which hold no data.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from personsearch.errors import InputError
from personsearch.model.torchscript import is_torchscript, read_torchscript
from personsearch.model.weights_trust import check_safetensors, load_safetensors

__all__ = ["read_weights_file"]

#: safetensors dtype names -> torch dtypes of the tensors read here (the header gives a little-endian
#: byte image of each); any other dtype is read by safetensors' own reader.
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


def read_weights_file(path: Path, keep: Callable[[str], bool] | None = None) -> Any:
    """The content of one weights file (tensors, or the dict a pickle holds); InputError names the file.

    ``keep``: for a ``.safetensors`` file, read only the tensors whose names it accepts and give the
    others as shape-only ``meta`` tensors; other formats are always read whole.
    """
    _ensure_regular(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path) if keep is None else _read_safetensors_part(path, keep)
    if is_torchscript(path):
        return read_torchscript(path)
    return _read_pickle(path)


def _read_safetensors_part(path: Path, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The tensors ``keep`` accepts, each read by name from its place in the file (the header says
    where); the rest as meta tensors of their shape and dtype, never read."""
    try:
        before = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    check_safetensors(path)  # the header is validated before anything is allocated from it
    out: dict[str, torch.Tensor] = {}
    try:
        with open(path, "rb") as handle:
            now = os.fstat(handle.fileno())
            if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != (
                    before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns):
                raise InputError(f"{path} changed while it was being read", hint="try again once it is written")
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                dtype = _DTYPES.get(entry["dtype"])
                if not keep(name):
                    out[name] = torch.empty(entry["shape"], dtype=dtype or torch.float32, device="meta")
                elif dtype is None or sys.byteorder != "little":  # safetensors' own reader converts these
                    out[name] = _read_one(path, name)
                else:
                    begin, end = entry["data_offsets"]
                    out[name] = _read_span(handle, 8 + length + begin, end - begin, entry["shape"], dtype, path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return out


def _read_span(handle: Any, offset: int, size: int, shape: list[int], dtype: torch.dtype, path: Path) -> torch.Tensor:
    """One tensor's bytes, read into a tensor of its own (aligned like any other the model holds)."""
    tensor = torch.empty(shape, dtype=dtype)
    if size:
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        handle.seek(offset)
        done = 0
        while done < size:
            count = handle.readinto(view[done:])
            if not count:
                raise InputError(f"cannot read {path}: the file ended inside a tensor (truncated while read?)",
                                 hint="copy or write it again")
            done += count
    return tensor


def _read_one(path: Path, name: str) -> torch.Tensor:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return handle.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise InputError(f"cannot read {path}: the safetensors file is truncated or corrupt ({exc})",
                         hint="copy or write it again") from None


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
