"""Samplers for every task: an endless, seeded, resumable training stream sharded over ranks
(optionally repeating images of rare classes), aspect-ratio grouped batches, and an exact (no
padding, no repeats) sharding for evaluation.
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


def repeat_factors(image_classes: Sequence[Sequence[int] | np.ndarray],
                   threshold: float) -> np.ndarray:
    """Repeat factor sampling (LVIS; detectron2's RepeatFactorTrainingSampler): a class c seen
    in a fraction f(c) of the images gets r(c) = max(1, sqrt(threshold / f(c))), an image the
    largest r(c) of its classes (1 without objects).

    Args:
        image_classes: the class ids of each training image's objects (those it trains on:
            detectron2 also counts crowd regions, which do not train the classifier).
        threshold: the image frequency under which a class is repeated, in (0, 1].

    Returns:
        float64 (N,) factors, each >= 1.
    """
    if not 0 < threshold <= 1:  # also NaN
        raise ValueError(f"repeat threshold must be in (0, 1], got {threshold!r}")
    unique = [np.unique(np.asarray(c, dtype=np.int64)) for c in image_classes]
    seen = np.concatenate(unique) if unique else np.zeros(0, np.int64)
    frequency = np.bincount(seen) / max(len(unique), 1)
    with np.errstate(divide="ignore"):
        per_class = np.maximum(1.0, np.sqrt(threshold / frequency))
    return np.array([per_class[c].max() if len(c) else 1.0 for c in unique], dtype=np.float64)


class TrainingSampler(Sampler):
    """Endless `(index, augmentation_seed)` keys: one global stream of reshuffled passes over
    the data, of which rank r takes every world_size-th key.

    Pass e of the stream is a permutation (and one seed per position) drawn from a generator
    seeded with (seed, e), so the stream depends on `seed` only: every rank agrees on it, and
    each key carries its own augmentation seed, so a sample is augmented identically whichever
    worker decodes it and whether or not training was resumed. With `factors`, image i is in
    a pass floor(r_i) times, once more with probability r_i - floor(r_i) (drawn by the same
    generator): passes differ in length, about sum(r) keys.

    Args:
        size: number of images.
        shuffle: reshuffle every pass (otherwise 0, 1, 2, ...).
        seed: stream seed, the same on every rank.
        start: keys of this rank's share to skip (to resume: steps done x per-process batch).
        rank: this process (default: from torch.distributed, else 0).
        world_size: number of processes (default: from torch.distributed, else 1).
        factors: (size,) repeat factors >= 1 (`repeat_factors`); None: each image once a pass.
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0, start: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 factors: Sequence[float] | np.ndarray | None = None) -> None:
        if size <= 0:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        self.size = size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.start = int(start)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.factors = None
        if factors is not None:
            self.factors = torch.as_tensor(np.asarray(factors, dtype=np.float64))
            if self.factors.shape != (size,) or not bool((self.factors >= 1).all()):
                raise ValueError(f"repeat factors must be {size} numbers >= 1, got shape "
                                 f"{tuple(self.factors.shape)}, smallest "
                                 f"{float(self.factors.min()) if self.factors.numel() else None}")

    def pass_keys(self, epoch: int) -> tuple[list[int], list[int]]:
        """(indices, augmentation seeds) of pass `epoch` of the global stream."""
        generator_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        g = torch.Generator().manual_seed(generator_seed)
        order = torch.arange(self.size)
        if self.factors is not None:
            whole = self.factors.floor()
            extra = torch.rand(self.size, generator=g, dtype=torch.float64) < self.factors - whole
            order = order.repeat_interleave((whole + extra).long())
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=g)]
        seeds = torch.randint(0, 2**31 - 1, (len(order),), generator=g)
        return order.tolist(), seeds.tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        offset = self.start * self.world_size + self.rank  # in the global stream
        epoch = 0
        if self.factors is None:
            epoch, offset = divmod(offset, self.size)
        while True:
            indices, seeds = self.pass_keys(epoch)
            while offset < len(indices):
                yield indices[offset], seeds[offset]
                offset += self.world_size
            epoch, offset = epoch + 1, offset - len(indices)


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
