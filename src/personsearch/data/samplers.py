"""Training samplers: plain shuffling, IRRA's P identities x K instances, and batches of identities
whose captions are alike (hard negatives), all deterministic given (seed, epoch) and shardable
across distributed ranks.

Each epoch's global order is drawn from ``numpy.random.default_rng([seed, epoch])`` and cut into
rank shares, so every rank computes the same order without communicating, shares are disjoint,
and ``state_dict``/``load_state_dict`` (seed, epoch, offset) resume mid-epoch exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from personsearch.text.tokenizer import EOT_TOKEN_ID, MASK_TOKEN_ID, PAD_TOKEN_ID, SOT_TOKEN_ID


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


#: The words ``data.similar_words=colours`` compares captions by: people dressed in the same
#: colours are the hard negatives of text-based person search.
COLOUR_WORDS = ("black", "white", "grey", "gray", "red", "blue", "green", "yellow", "pink", "purple", "violet",
                "brown", "orange", "beige", "khaki", "navy", "tan", "maroon", "silver", "gold", "golden", "cream",
                "dark", "light")


def colour_token_ids() -> list[int]:
    """The token ids of ``COLOUR_WORDS`` (each a single token of the CLIP tokenizer)."""
    from personsearch.text.tokenizer import default_tokenizer

    tokenizer = default_tokenizer()
    return sorted({ids[0] for ids in (tokenizer.encode(word) for word in COLOUR_WORDS) if len(ids) == 1})


def caption_neighbours(pids: Sequence[int], tokens: np.ndarray, count: int, chunk: int = 1024,
                       only: Sequence[int] | None = None) -> dict[int, list[int]]:
    """For every identity, the ``count`` other identities whose captions are most alike, most alike
    first: cosine similarity of tf-idf vectors over the token ids of all the identity's captions
    (padding and the special ids left out; with ``only``, just those ids). Ties go to the smaller
    identity."""
    pid_list = sorted({int(pid) for pid in pids})
    if len(pid_list) < 2 or count < 1:
        return {pid: [] for pid in pid_list}
    row_of = {pid: row for row, pid in enumerate(pid_list)}
    tokens = np.asarray(tokens)
    kept = ~np.isin(tokens, (PAD_TOKEN_ID, MASK_TOKEN_ID, SOT_TOKEN_ID, EOT_TOKEN_ID))
    if only is not None:
        kept &= np.isin(tokens, np.asarray(only, dtype=tokens.dtype))
    sample_rows = np.repeat(np.asarray([row_of[int(pid)] for pid in pids]), kept.sum(axis=1))
    words, columns = np.unique(tokens[kept], return_inverse=True)
    # Dense identities x words used, weighted in place (CUHK-PEDES: ~11k x ~6k floats, ~0.3 GB once).
    vectors = np.zeros((len(pid_list), len(words)), dtype=np.float32)
    np.add.at(vectors, (sample_rows, columns.reshape(-1)), 1.0)
    vectors *= np.log(len(pid_list) / (vectors > 0).sum(axis=0)).astype(np.float32)[None, :]
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    count = min(count, len(pid_list) - 1)
    found: dict[int, list[int]] = {}
    for start in range(0, len(pid_list), chunk):
        similarity = vectors[start : start + chunk] @ vectors.T
        rows = np.arange(similarity.shape[0])
        similarity[rows, rows + start] = -np.inf  # never one's own neighbour
        order = np.argsort(-similarity, axis=1, kind="stable")[:, :count]
        for row, best in zip(rows.tolist(), order.tolist(), strict=True):
            found[pid_list[start + row]] = [pid_list[j] for j in best]
    return found


class SimilarCaptionSampler(_EpochSampler):
    """Batches built from groups of identities whose captions are alike, so the matching losses
    must separate people described in nearly the same words (hard negatives).

    Per epoch every sample is used once. A batch is filled group by group: an anchor identity is
    drawn (in proportion to the samples it has left), then up to ``group - 1`` of its caption
    neighbours (``caption_neighbours``, most alike first) that still have samples and are not in
    the batch yet; each gives one sample. Identities in a batch are distinct while enough remain;
    the epoch's last batches take what is left. Only the captions' token ids are used, so any
    dataset works. With ``words="colours"`` captions are compared by their colour words only
    (``COLOUR_WORDS``), so a group wears the same colours and the losses must tell its people apart
    by everything else: the kind of garment, the bag. Under several replicas whole batches are
    dealt round-robin.
    """

    def __init__(
        self,
        pids: Sequence[int],
        tokens: np.ndarray,
        batch_size: int,
        group: int = 4,
        neighbours: int = 16,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        words: str = "all",
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        if len(pids) < 1:
            raise ValueError("cannot sample from an empty dataset")
        if words not in ("all", "colours"):
            raise ValueError(f"words must be all or colours, not {words!r}")
        if len(tokens) != len(pids):
            raise ValueError(f"{len(tokens)} token rows for {len(pids)} samples")
        if group < 1 or batch_size < 1:
            raise ValueError(f"group {group} and batch size {batch_size} must be at least 1")
        self.batch_size = int(batch_size)
        self.group = int(group)
        groups: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            groups.setdefault(int(pid), []).append(index)
        self.index_of_pid = groups
        self.pid_list = sorted(groups)
        only = colour_token_ids() if words == "colours" else None
        self.neighbours = caption_neighbours(pids, tokens, max(neighbours, group - 1), only=only)

    def _global_order(self, rng: np.random.Generator) -> list[int]:
        left = {pid: rng.permutation(self.index_of_pid[pid]).tolist() for pid in self.pid_list}
        pid_array = np.asarray(self.pid_list)
        remaining = np.asarray([len(left[pid]) for pid in self.pid_list], dtype=np.float64)
        position = {pid: i for i, pid in enumerate(self.pid_list)}
        total = int(remaining.sum())
        order: list[int] = []

        def take(pid: int) -> None:
            order.append(left[pid].pop())
            remaining[position[pid]] -= 1

        while len(order) < total:
            in_batch: set[int] = set()
            batch_end = min(total, len(order) + self.batch_size)
            while len(order) < batch_end:
                free = remaining.copy()
                free[[position[pid] for pid in in_batch]] = 0
                if free.sum() == 0:  # every identity with samples left is in the batch already
                    free = remaining.copy()
                anchor = int(pid_array[rng.choice(len(pid_array), p=free / free.sum())])
                in_batch.add(anchor)
                take(anchor)
                members = 1
                for pid in self.neighbours[anchor]:
                    if len(order) >= batch_end or members >= self.group:
                        break
                    if left[pid] and pid not in in_batch:
                        in_batch.add(pid)
                        take(pid)
                        members += 1
        return order

    def _share(self, order: list[int]) -> list[int]:
        if self.num_replicas == 1:
            return order
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
    tokens: np.ndarray | None = None,
    group: int = 4,
    words: str = "all",
) -> ShuffleSampler | IdentitySampler | SimilarCaptionSampler:
    """The sampler named by ``data.sampler`` (``random``, ``identity`` or ``similar``, which needs
    the samples' caption ``tokens`` and groups ``group`` identities alike in ``words``)."""
    if kind == "identity":
        return IdentitySampler(pids, batch_size, num_instances, seed, num_replicas, rank)
    if kind == "random":
        return ShuffleSampler(len(pids), seed, num_replicas, rank)
    if kind == "similar":
        if tokens is None:
            raise ValueError("the similar sampler needs the captions' token ids")
        return SimilarCaptionSampler(pids, tokens, batch_size, group, seed=seed, num_replicas=num_replicas,
                                     rank=rank, words=words)
    raise ValueError(f"unknown sampler {kind!r}; choose random, identity or similar")
