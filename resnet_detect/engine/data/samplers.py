"""Samplers for every task: an endless, seeded, resumable training stream sharded over ranks,
aspect-ratio grouped batches, and an exact (no padding, no repeats) sharding for evaluation.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ..distributed import get_rank, get_world_size


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


class TrainingSampler(Sampler):
    """Endless `(index, augmentation_seed)` keys: one global stream of reshuffled passes over
    the data, of which rank r takes every world_size-th key.

    Pass e of the stream is a permutation (and one seed per position) drawn from a generator
    seeded with (seed, e), so the stream depends on `seed` only: every rank agrees on it, and
    each key carries its own augmentation seed, so a sample is augmented identically whichever
    worker decodes it and whether or not training was resumed.

    Args:
        size: number of images.
        shuffle: reshuffle every pass (otherwise 0, 1, 2, ...).
        seed: stream seed, the same on every rank.
        start: keys of this rank's share to skip (to resume: steps done x per-process batch).
        rank: this process (default: from torch.distributed, else 0).
        world_size: number of processes (default: from torch.distributed, else 1).
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0, start: int = 0,
                 rank: int | None = None, world_size: int | None = None) -> None:
        if size <= 0:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        self.size = size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.start = int(start)
        self.rank, self.world_size = _rank_and_world(rank, world_size)

    def pass_keys(self, epoch: int) -> tuple[list[int], list[int]]:
        """(indices, augmentation seeds) of pass `epoch` of the global stream."""
        generator_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        g = torch.Generator().manual_seed(generator_seed)
        order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=g)
        return order.tolist(), seeds.tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start * self.world_size + self.rank  # in the global stream
        epoch, offset = divmod(position, self.size)
        while True:
            indices, seeds = self.pass_keys(epoch)
            while offset < self.size:
                yield indices[offset], seeds[offset]
                offset += self.world_size
            epoch, offset = epoch + 1, offset - self.size


class InferenceSampler(Sampler):
    """Rank r gets a contiguous slice of 0..size-1; slices differ in length by at most one,
    and together they hold every index exactly once (per-rank sums can be all-reduced).

    Args:
        size: number of images.
        rank: this process (default: from torch.distributed, else 0).
        world_size: number of processes (default: from torch.distributed, else 1).
    """

    def __init__(self, size: int, *, rank: int | None = None,
                 world_size: int | None = None) -> None:
        rank, world_size = _rank_and_world(rank, world_size)
        per_rank, extra = divmod(size, world_size)
        self.start = rank * per_rank + min(rank, extra)
        self.stop = self.start + per_rank + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def _index_of(key: Any) -> int:
    return key[0] if isinstance(key, tuple) else key


class GroupedBatchSampler(Sampler):
    """Batches whose images share a group (e.g. landscape vs portrait), so padding wastes little.

    Keys are buffered per group and a batch is emitted when its group has `batch_size` of
    them; nothing is emitted for leftovers, which suits endless training streams. With one
    group this is plain batching of consecutive keys.

    Args:
        sampler: keys (indices, or TrainingSampler's (index, seed) pairs).
        group_ids: group of every dataset index (e.g. DetectionDataset.group_ids).
        batch_size: images per batch on this process.
        start_batch: batches to skip first (to resume a run where it stopped).
    """

    def __init__(self, sampler: Iterable[Any], *, group_ids: Sequence[int] | np.ndarray,
                 batch_size: int, start_batch: int = 0) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = np.asarray(group_ids)
        self.batch_size = batch_size
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[Any]]:
        buckets: dict[int, list[Any]] = {}
        emitted = 0
        for key in self.sampler:
            bucket = buckets.setdefault(int(self.group_ids[_index_of(key)]), [])
            bucket.append(key)
            if len(bucket) == self.batch_size:
                if emitted >= self.start_batch:
                    yield list(bucket)
                emitted += 1
                bucket.clear()
