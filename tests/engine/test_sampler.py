"""engine.sampler: epoch permutations sharded over ranks, resumable stream, eval shards."""
from __future__ import annotations

import itertools

import pytest

from engine.sampler import InfiniteSampler, ShardSampler


def take(sampler: InfiniteSampler, n: int) -> list:
    return list(itertools.islice(iter(sampler), n))


def test_each_epoch_is_a_permutation_split_over_ranks() -> None:
    ranks = [InfiniteSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    first = [take(s, 5) for s in ranks]
    assert sorted(first[0] + first[1]) == list(range(10))
    second = [take(s, 10)[5:] for s in ranks]
    assert sorted(second[0] + second[1]) == list(range(10))
    assert first != second  # a new permutation each epoch (set_epoch folded in)


def test_uneven_size_is_padded_so_ranks_get_equal_shares() -> None:
    ranks = [InfiniteSampler(7, seed=0, rank=r, world_size=3) for r in range(3)]
    epoch = [take(s, 3) for s in ranks]
    flat = [i for shard in epoch for i in shard]
    assert len(flat) == 9 and set(flat) == set(range(7))


def test_more_ranks_than_samples() -> None:
    ranks = [InfiniteSampler(2, shuffle=False, rank=r, world_size=5) for r in range(5)]
    assert [take(s, 1)[0] for s in ranks] == [0, 1, 0, 1, 0]


def test_resume_from_position_continues_the_same_stream_with_seeds() -> None:
    full = take(InfiniteSampler(9, seed=5, rank=1, world_size=2, with_seeds=True), 23)
    resumed = take(InfiniteSampler(9, seed=5, rank=1, world_size=2, with_seeds=True,
                                   start=11), 12)
    assert resumed == full[11:]
    assert all(isinstance(i, int) and isinstance(s, int) for i, s in full)
    assert len({s for _, s in full}) == len(full)  # fresh augmentation seed per draw


def test_unshuffled_and_different_seeds() -> None:
    assert take(InfiniteSampler(4, shuffle=False, rank=0, world_size=1), 6) == [0, 1, 2, 3, 0, 1]
    a = take(InfiniteSampler(50, seed=0, rank=0, world_size=1), 50)
    b = take(InfiniteSampler(50, seed=1, rank=0, world_size=1), 50)
    assert a != b and sorted(a) == sorted(b)
    with pytest.raises(ValueError, match="empty dataset"):
        InfiniteSampler(0)


def test_shard_sampler_covers_each_index_once() -> None:
    shards = [list(ShardSampler(7, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(ShardSampler(7, rank=r, world_size=3)) for r in range(3)] == [3, 2, 2]
