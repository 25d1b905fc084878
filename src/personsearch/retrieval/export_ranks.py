"""Export across processes (``torchrun``): each rank embeds a disjoint share of the files and
writes its own shards; rank 0 commits one index header after every rank has finished.

Runs when ``torch.distributed`` is initialised with more than one process (``personsearch export
--nproc N`` starts them; a Python caller under torchrun initialises the group itself, e.g. with
``personsearch.engine.dist.init_distributed``): gloo on CPUs, NCCL on GPUs. Rank 0 describes the
files once and sends the list to every rank, so all ranks cut the same list. Shares are contiguous
and cut at batch boundaries, so the index holds the rows one process would write, in the same
order, from the same batches. Each rank numbers its shards from its own base (no two ranks can
pick the same file name) into the new index's temporary folder, which rank 0 created and which
must be visible to every rank (one machine, or a shared file system). Rank 0 then writes the
superseded rows and the header and renames the folder into place: until then readers see the old
index, and a failure on any rank removes the temporary folder on rank 0 and raises on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from personsearch.errors import InputError, RunFailure
from personsearch.io import atomic_directory, ensure_replaceable
from personsearch.retrieval.gallery import GalleryIndex
from personsearch.retrieval.index import (
    INDEX_KIND,
    IndexWriter,
    check_new_index,
    feed,
    finish_new_index,
    index_file_name,
    is_index_folder,
)

T = TypeVar("T")


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_device(device: torch.device) -> torch.device:
    """This rank's GPU (``LOCAL_RANK``) when ``device`` is CUDA and several processes share a node."""
    _, world = process_group()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _gather(value: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _raise_first(statuses: Sequence[Any]) -> None:
    """Raise, on every rank, the first failure any rank reported."""
    for rank, status in enumerate(statuses):
        if status is not None:
            kind, message, hint = status
            if kind == "input":
                raise InputError(message, hint=hint)
            raise RunFailure(f"export rank {rank} failed: {message}")


def _status(exc: BaseException) -> tuple[str, str, str | None]:
    if isinstance(exc, InputError):
        return "input", exc.message, exc.hint
    return "failure", f"{type(exc).__name__}: {exc}", None


def together(step: Callable[[], T], on: int | None = None) -> T:
    """Run ``step`` on every rank (or only on rank ``on``, whose result every rank then gets): a
    failure anywhere raises on every rank, so no rank waits for one that gave up."""
    rank, world = process_group()
    if world == 1:
        return step()
    result, status = None, None
    if on is None or rank == on:
        try:
            result = step()
        except Exception as exc:  # noqa: BLE001 - reported to every rank, raised below
            status = _status(exc)
    gathered = _gather((status, result if on is not None and rank == on else None))
    _raise_first([s for s, _ in gathered])
    return gathered[on][1] if on is not None else result  # type: ignore[return-value]


def shares(count: int, world: int, batch_size: int) -> list[tuple[int, int]]:
    """Each rank's [start, end) of ``count`` files: contiguous, as even as whole batches allow."""
    batches = -(-count // batch_size)
    cuts = [min(count, batches * r // world * batch_size) for r in range(world + 1)]
    return [(cuts[r], cuts[r + 1]) for r in range(world)]


def first_shards(spans: Sequence[tuple[int, int]], shard_size: int) -> list[int]:
    """The first shard number of each rank: past every shard the ranks before it can write."""
    firsts, number = [], 0
    for start, end in spans:
        firsts.append(number)
        number += -(-(end - start) // shard_size)
    return firsts


def write_index_across_ranks(
    out: Path, batches: Iterable[Any], entries: Iterable[Any], first_shard: int, first_row: int,
    model_fingerprint: str, image_root: str | Path, shard_size: int, extra_header: dict[str, Any] | None,
    counted: Callable[[], tuple[int, list[tuple[str, str]]]],
) -> tuple[GalleryIndex, int, list[tuple[str, str]]]:
    """``write_index`` for one rank's share: its rows into shards from ``first_shard``; rank 0
    commits. ``counted()`` gives this rank's (images embedded, files skipped while reading) once
    its batches are consumed. Returns the index and every rank's counts, merged."""
    rank, _ = process_group()
    root = check_new_index(model_fingerprint, shard_size, image_root)
    folder = atomic_directory(out) if rank == 0 else None  # entered and left on rank 0 only

    def make_folder() -> str:
        ensure_replaceable(out, INDEX_KIND, "gallery index", legacy=is_index_folder, written=index_file_name)
        return str(folder.__enter__())  # type: ignore[union-attr]

    tmp = Path(together(make_folder, on=0))
    left = False  # rank 0 has left the temporary folder (renamed it into place, or removed it)
    try:

        def write_share() -> tuple[list[dict[str, Any]], int | None, int, list[tuple[str, str]]]:
            writer = IndexWriter(tmp, first_shard, shard_size, None, first_row)
            feed(writer, batches, entries)
            writer.flush()
            return (writer.shards, writer.dim, *counted())

        parts = _gather(together(write_share))
        indexed = sum(part[2] for part in parts)
        skipped = [item for part in parts for item in part[3]]

        def commit() -> None:
            nonlocal left
            if indexed == 0:
                first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
                raise InputError(f"none of the images could be read{first}",
                                 hint="check the files; the index was not written")
            dims = {part[1] for part in parts if part[1] is not None}
            if len(dims) != 1:
                raise RunFailure(f"the ranks embedded with different dimensions: {sorted(dims)}")
            shards = [shard for part in parts for shard in part[0]]
            finish_new_index(tmp, out, shards, dims.pop(), model_fingerprint, root, shard_size, extra_header)
            left = True
            folder.__exit__(None, None, None)  # type: ignore[union-attr]  # the new index replaces the old one

        together(commit, on=0)
    except BaseException as exc:
        if folder is not None and not left:
            folder.__exit__(type(exc), exc, exc.__traceback__)  # removes the temporary folder
        raise
    return GalleryIndex.open(out, verify=False), indexed, skipped
