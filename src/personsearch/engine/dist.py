"""torch.distributed plumbing: process groups from torchrun's environment, rank-aware helpers and
feature gathering that keeps gradients (for losses over the global batch)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (gloo on CPU, NCCL on CUDA); a no-op otherwise."""
    if not launched_by_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_with_grad(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate a tensor from every rank along dim 0; gradients flow back to each rank's part."""
    if not info.enabled:
        return tensor
    if not tensor.is_floating_point():  # labels and ids: no gradient to carry
        parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def broadcast_flag(value: bool, info: DistInfo) -> bool:
    """True on every rank if it is True on any rank (stop requests, non-finite losses)."""
    if not info.enabled:
        return value
    flag = torch.tensor([1.0 if value else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def check_nproc(nproc: int, device: str | None) -> None:
    """One process per GPU (or, on the CPU, at most one per core): anything else is a typo that would
    start hundreds of processes (training or export), or none."""
    from personsearch.errors import InputError

    if nproc < 1:
        raise InputError(f"--nproc {nproc}: give the number of processes, 1 or more")
    if nproc == 1:
        return
    on_gpu = torch.cuda.is_available() and (device or "auto") not in ("cpu",)
    limit = torch.cuda.device_count() if on_gpu else (os.cpu_count() or 1)
    if nproc > limit:
        where = f"{limit} CUDA devices" if on_gpu else f"{limit} CPU cores"
        raise InputError(f"--nproc {nproc} is more processes than this machine has {where}",
                         hint=f"use --nproc {limit} or fewer")


def launch_torchrun(nproc: int, name: str | None, argv: list[str] | None = None) -> int:
    """Run this command again under torch.distributed.run with ``nproc`` processes (the same
    arguments, less ``--nproc``; ``name`` added when the run's name was chosen here, so every
    process trains the same run); returns torchrun's exit code."""
    import subprocess
    import sys

    args: list[str] = []
    skip = False
    for arg in (sys.argv[1:] if argv is None else argv):
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        args.append(arg)
    if name is not None and not any(arg in ("--name", "-n") or arg.startswith("--name=") for arg in args):
        args += ["--name", name]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "personsearch", *args]
    return subprocess.call(command)
