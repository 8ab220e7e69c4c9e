"""Samplers and loaders: an infinite seeded training stream sharded across ranks, aspect-ratio
grouped batches, and an exact (no padding, no repeats) sharding for evaluation.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from .dataset import collate


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialized = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


def sample_seed(seed: int, position: int) -> int:
    """Augmentation seed of the sample at `position` of the global training stream."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


class TrainingSampler(Sampler):
    """Endless `(index, augmentation_seed)` keys: reshuffled epochs, rank r takes every
    world_size-th key of one global stream.

    The stream depends on `seed` only, so every rank agrees on it, and each key carries its
    own augmentation seed: the same sample is augmented identically whichever worker
    decodes it and whether or not training was resumed.

    Args:
        size: number of images.
        shuffle: reshuffle every pass (otherwise 0, 1, 2, ...).
        seed: stream seed, the same on every rank.
        rank: this process (default: from torch.distributed, else 0).
        world_size: number of processes (default: from torch.distributed, else 1).
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}")
        self.size = size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world_size = _rank_and_world(rank, world_size)

    def _global_stream(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=generator).tolist()
            else:
                yield from range(self.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        stream = itertools.islice(enumerate(self._global_stream()), self.rank, None,
                                  self.world_size)
        for position, index in stream:
            yield index, sample_seed(self.seed, position)


class InferenceSampler(Sampler):
    """Rank r gets a contiguous slice of 0..size-1; slices differ in length by at most one,
    and together they hold every index exactly once.

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
    them; nothing is emitted for leftovers, which suits endless training streams.

    Args:
        sampler: keys (indices, or TrainingSampler's (index, seed) pairs).
        group_ids: group of every dataset index (see DetectionDataset.group_ids).
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


def build_train_loader(dataset: Dataset, *, batch_size: int, seed: int = 0, num_workers: int = 0,
                       aspect_grouping: bool = True, start_batch: int = 0,
                       rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """Endless training loader of lists of samples.

    Args:
        dataset: a DetectionDataset (or anything with `group_ids` when aspect_grouping).
        batch_size: images per step on this process (the global batch / world size).
        seed: sampling and augmentation seed, the same on every rank.
        num_workers: DataLoader worker processes.
        aspect_grouping: batch landscape and portrait images separately.
        start_batch: batches already consumed (resume).
        rank: this process (default: from torch.distributed).
        world_size: number of processes (default: from torch.distributed).
    """
    sampler = TrainingSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)
    group_ids = (dataset.group_ids if aspect_grouping
                 else np.zeros(len(dataset), dtype=np.int64))
    batches = GroupedBatchSampler(sampler, group_ids=group_ids, batch_size=batch_size,
                                  start_batch=start_batch)
    # No cv2.setNumThreads in the workers: reconfiguring OpenCV's thread pool inherited
    # through fork deadlocks (seen with opencv 5.0).
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=num_workers > 0)


def build_test_loader(dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0,
                      rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """Loader over this rank's share of the dataset, every image once, in order."""
    sampler = InferenceSampler(len(dataset), rank=rank, world_size=world_size)
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate)
