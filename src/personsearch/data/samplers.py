"""Training samplers: plain shuffling and IRRA's P identities x K instances, both deterministic
given (seed, epoch) and shardable across distributed ranks.

Each epoch's global order is drawn from ``numpy.random.default_rng([seed, epoch])`` and cut into
rank shares, so every rank computes the same order without communicating, shares are disjoint,
and ``state_dict``/``load_state_dict`` (seed, epoch, offset) resume mid-epoch exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


def _replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None or rank is None:
        import torch.distributed as dist

        ready = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if ready else 1)
        rank = rank if rank is not None else (dist.get_rank() if ready else 0)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
    return num_replicas, rank


class _EpochSampler(Sampler[int]):
    def __init__(self, seed: int, num_replicas: int | None, rank: int | None) -> None:
        self.seed = int(seed)
        self.epoch = 0
        self.offset = 0
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self._cache: tuple[int, list[int]] | None = None

    def _global_order(self, rng: np.random.Generator) -> list[int]:
        raise NotImplementedError

    def _share(self, order: list[int]) -> list[int]:
        raise NotImplementedError

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch (before the resume offset)."""
        if self._cache is None or self._cache[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._cache = (self.epoch, self._share(self._global_order(rng)))
        return self._cache[1]

    def set_epoch(self, epoch: int, offset: int = 0) -> None:
        """Select the epoch's order; ``offset`` skips the first samples already consumed."""
        self.epoch = int(epoch)
        self.offset = int(offset)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]), int(state.get("offset", 0)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.offset :])

    def __len__(self) -> int:
        return max(0, len(self.indices()) - self.offset)


class ShuffleSampler(_EpochSampler):
    """A fresh permutation each epoch; with several replicas, padded by wrapping (like
    DistributedSampler) so every rank gets the same number of samples, rank ``r`` taking
    positions r, r + R, ..."""

    def __init__(
        self, size: int, seed: int = 0, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        if size < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.size = int(size)

    def _global_order(self, rng: np.random.Generator) -> list[int]:
        return rng.permutation(self.size).tolist()

    def _share(self, order: list[int]) -> list[int]:
        total = -(-len(order) // self.num_replicas) * self.num_replicas
        padded = (order * (total // len(order) + 1))[:total]
        return padded[self.rank :: self.num_replicas]


class IdentitySampler(_EpochSampler):
    """IRRA's RandomIdentitySampler: batches of P = batch_size // K identities with K samples each.

    Per identity its samples are shuffled (drawn with replacement up to K when fewer) and cut
    into groups of K (a short remainder dropped); then P identities that still have groups are
    drawn at random, each giving its next group, until fewer than P remain. ``batch_size`` is the
    per-rank batch; under several replicas whole batches are dealt round-robin and every rank
    gets the same number.
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        num_instances: int = 4,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        if num_instances < 1 or batch_size < num_instances:
            raise ValueError(f"batch size {batch_size} must be at least num_instances {num_instances}")
        if batch_size % num_instances:
            raise ValueError(f"batch size {batch_size} must be a multiple of num_instances {num_instances}")
        self.batch_size = int(batch_size)
        self.num_instances = int(num_instances)
        self.pids_per_batch = batch_size // num_instances
        groups: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            groups.setdefault(int(pid), []).append(index)
        self.index_of_pid = groups
        self.pid_list = sorted(groups)
        if len(self.pid_list) < self.pids_per_batch:
            raise ValueError(
                f"{len(self.pid_list)} identities cannot fill batches of {self.pids_per_batch} identities"
            )

    def _global_order(self, rng: np.random.Generator) -> list[int]:
        k = self.num_instances
        chunks: dict[int, list[list[int]]] = {}
        for pid in self.pid_list:
            indices = np.asarray(self.index_of_pid[pid])
            if len(indices) < k:
                indices = rng.choice(indices, size=k, replace=True)
            indices = rng.permutation(indices).tolist()
            chunks[pid] = [indices[start : start + k] for start in range(0, len(indices) - k + 1, k)]
        available = list(self.pid_list)
        order: list[int] = []
        while len(available) >= self.pids_per_batch:
            chosen = rng.choice(len(available), size=self.pids_per_batch, replace=False)
            picked = [available[position] for position in chosen.tolist()]
            for pid in picked:
                order.extend(chunks[pid].pop(0))
            exhausted = {pid for pid in picked if not chunks[pid]}
            if exhausted:
                available = [pid for pid in available if pid not in exhausted]
        return order

    def _share(self, order: list[int]) -> list[int]:
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        per_rank = len(batches) // self.num_replicas
        mine = batches[self.rank :: self.num_replicas][:per_rank]
        return [index for batch in mine for index in batch]


def build_sampler(
    kind: str,
    pids: Sequence[int],
    batch_size: int,
    num_instances: int = 4,
    seed: int = 0,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> ShuffleSampler | IdentitySampler:
    """The sampler named by ``data.sampler`` (``random`` or ``identity``)."""
    if kind == "identity":
        return IdentitySampler(pids, batch_size, num_instances, seed, num_replicas, rank)
    if kind == "random":
        return ShuffleSampler(len(pids), seed, num_replicas, rank)
    raise ValueError(f"unknown sampler {kind!r}; choose random or identity")
