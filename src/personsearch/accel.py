"""Device and numeric precision: one place that turns ``runtime.device``/``runtime.precision`` into
a torch device and an autocast context, so no module hard-codes ``cuda`` or ``.half()``.

``auto`` precision is what is fast on the machine at hand, decided once: bf16 on CUDA devices that
have it (fp16 on older ones), fp32 on a CPU without bf16 instructions (there bf16 is emulated and
slower), and on a CPU with them a measured answer: some such CPUs (AMX) multiply bf16 matrices
four times faster than fp32, others (AVX512-BF16 alone) slower. The measurement (a few tenths of a
second) is remembered in the user's cache folder per CPU model, torch version and thread count.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from personsearch.errors import InputError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("fp32", "bf16", "fp16")
#: bf16 is chosen on a CPU when its matrix products beat fp32 by at least this much (casts,
#: layer norms and softmax stay in fp32 under autocast, so the end-to-end gain is smaller).
BF16_MIN_SPEEDUP = 1.3
_PROBE_FILE = "precision.json"
_PROBE_VERSION = 1
_PROBE_ENTRIES = 16


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
    if precision == "auto":
        return
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}", hint="use auto, fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise InputError("fp16 needs a CUDA device", hint="use --precision bf16 on the CPU")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a command runs at, and why (``auto`` resolved, or as asked)."""

    precision: str
    reason: str

    def __str__(self) -> str:
        return f"{self.precision} ({self.reason})"


def resolve_precision(precision: str, device: torch.device) -> PrecisionChoice:
    """``precision`` checked on ``device``, with ``auto`` replaced by what is fast there."""
    check_precision(precision, device)
    if precision != "auto":
        return PrecisionChoice(precision, "as asked")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "auto: CUDA with bf16")
        return PrecisionChoice("fp16", "auto: CUDA without bf16")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"auto: {device.type}")
    if not cpu_bf16_instructions():
        return PrecisionChoice("fp32", "auto: this CPU has no bf16 instructions")
    fp32_rate, bf16_rate = cpu_matmul_rates()
    speedup = bf16_rate / fp32_rate if fp32_rate > 0 else 0.0
    chosen = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    return PrecisionChoice(chosen, f"auto: bf16 matrix products run at {speedup:.2f}x fp32 on this CPU")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_instructions() -> bool:
    """Whether the CPU has bf16 arithmetic (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "bf16" in cpu_flags() or platform.system() == "Darwin"
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (the platform's processor string where /proc/cpuinfo does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_matmul_rates() -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s of a ViT-B-sized matrix product on this CPU: measured once, then read
    from the cache for this CPU model, flag set, torch version and thread count."""
    known = _probe_entries().get(_probe_key())
    if (isinstance(known, dict) and all(isinstance(known.get(k), (int, float)) and known[k] > 0
                                        for k in ("fp32", "bf16"))):
        return float(known["fp32"]), float(known["bf16"])
    rates = _measure_matmul()
    remember_matmul_rates(*rates)
    return rates


def remember_matmul_rates(fp32: float, bf16: float) -> None:
    """Record this machine's (fp32, bf16) matrix-product rates in the cache (best effort)."""
    from personsearch.io.cache import cache_folder, write_cache_json

    folder = cache_folder()
    if folder is None:
        return
    machines = _probe_entries()
    key = _probe_key()
    machines.pop(key, None)
    machines[key] = {"fp32": fp32, "bf16": bf16, "cpu": cpu_model(), "torch": torch.__version__,
                     "threads": torch.get_num_threads()}
    write_cache_json(folder / _PROBE_FILE, {"version": _PROBE_VERSION,
                                            "machines": dict(list(machines.items())[-_PROBE_ENTRIES:])})


def _probe_key() -> str:
    identity = "|".join([cpu_model(), ",".join(sorted(cpu_flags())), torch.__version__,
                         str(torch.get_num_threads())])
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def _probe_entries() -> dict:
    from personsearch.io.cache import cache_folder, read_cache_json

    folder = cache_folder()
    machines = read_cache_json(folder / _PROBE_FILE, _PROBE_VERSION).get("machines") if folder else None
    return dict(machines) if isinstance(machines, dict) else {}


def _measure_matmul(rows: int = 1536, width: int = 768, hidden: int = 3072, repeats: int = 3) -> tuple[float, float]:
    """Best-of GFLOP/s of [rows, width] x [width, hidden] (a ViT-B MLP layer at batch 8) in fp32 and
    bf16, the two timed in turn so that other work on the machine weighs on both alike."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=generator)
    w = torch.randn(hidden, width, generator=generator)
    pairs = {torch.float32: (x, w), torch.bfloat16: (x.bfloat16(), w.bfloat16())}
    best = dict.fromkeys(pairs, float("inf"))
    with torch.no_grad():
        for a, b in pairs.values():
            torch.nn.functional.linear(a, b)  # warm-up: kernels chosen, memory touched
        for _ in range(repeats):
            for dtype, (a, b) in pairs.items():
                start = time.perf_counter()
                torch.nn.functional.linear(a, b)
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    flops = 2.0 * rows * width * hidden
    fp32, bf16 = (round(flops / max(best[dtype], 1e-9) / 1e9, 1) for dtype in pairs)
    return fp32, bf16


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Mixed precision for the forward pass; fp32 is a plain no-op context, ``auto`` what
    ``resolve_precision`` picks."""
    if precision == "auto":
        precision = resolve_precision(precision, device).precision
    if precision == "fp32":
        yield
        return
    check_precision(precision, device)
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield
