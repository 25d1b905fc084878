"""Device and numeric precision: one place that turns ``runtime.device``/``runtime.precision`` into
a torch device and an autocast context, so no module hard-codes ``cuda`` or ``.half()``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from personsearch.errors import InputError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; an unavailable device is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"device {name!r} requested but MPS is not available", hint="use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {name!r}: personsearch trains on cpu, cuda or cuda:N",
                         hint="use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} requested but CUDA is not available", hint="use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in ("fp32", "bf16", "fp16"):
        raise InputError(f"unknown precision {precision!r}", hint="use fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise InputError("fp16 needs a CUDA device", hint="use --precision bf16 on the CPU")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Mixed precision for the forward pass; fp32 is a plain no-op context."""
    if precision == "fp32":
        yield
        return
    check_precision(precision, device)
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield
