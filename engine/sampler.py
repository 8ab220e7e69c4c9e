"""Index samplers: an endless, seeded, resumable training stream and a sharded eval order.

`InfiniteSampler` is DistributedSampler with `set_epoch` folded in: epoch e is a permutation
drawn from a generator seeded with `seed + e`, padded to a multiple of the world size, and
rank r takes every world_size-th index from position r. With `with_seeds` it yields
`(index, sample_seed)` pairs, the seed drawn alongside the permutation, so a dataset can seed
its augmentation per sample: the stream is then a pure function of (seed, position), the same
for any number of loader workers and after a resume from position `start`.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from .distributed import get_rank, get_world_size


class InfiniteSampler(Sampler):
    """Endless shuffled (or ordered) indices for this rank, from stream position `start`.

    Args:
        size: dataset length.
        shuffle: permute each epoch (False repeats 0..size-1).
        seed: the same on every process.
        start: samples of this rank's stream to skip (iteration * batch size per process).
        with_seeds: yield (index, sample_seed) instead of index.
        rank, world_size: default to the current process group.
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0, start: int = 0,
                 with_seeds: bool = False, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if size <= 0:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        self.size = size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.start = int(start)
        self.with_seeds = with_seeds
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        self.per_rank = -(-size // self.world_size)  # ceil: short shards are padded

    def epoch_indices(self, epoch: int) -> tuple[list[int], list[int]]:
        """(indices, sample seeds) of this rank for one epoch."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
        padded = self.per_rank * self.world_size
        order = order.repeat(-(-padded // self.size))[:padded]
        seeds = torch.randint(0, 2**31 - 1, (padded,), generator=g)
        return (order[self.rank::self.world_size].tolist(),
                seeds[self.rank::self.world_size].tolist())

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            indices, seeds = self.epoch_indices(epoch)
            for i in range(offset, self.per_rank):
                yield (indices[i], seeds[i]) if self.with_seeds else indices[i]
            epoch, offset = epoch + 1, 0


class ShardSampler(Sampler):
    """Each index once, split across ranks without padding (rank r: r, r + W, ...).

    For evaluation whose per-rank sums are all-reduced: nothing is counted twice.
    """

    def __init__(self, size: int, *, rank: int | None = None,
                 world_size: int | None = None) -> None:
        self.size = size
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))
