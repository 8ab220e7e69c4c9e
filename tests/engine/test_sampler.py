"""engine.data.samplers: one seeded stream of passes sharded over ranks, resumable; grouped
batches; exact evaluation shards."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from resnet_detect.engine.data.samplers import (GroupedBatchSampler, InferenceSampler,
                                                TrainingSampler, repeat_factors)


def take(sampler: TrainingSampler, n: int) -> list:
    return list(itertools.islice(iter(sampler), n))


def indices(sampler: TrainingSampler, n: int) -> list[int]:
    return [i for i, _ in take(sampler, n)]


def test_each_epoch_is_a_permutation_split_over_ranks() -> None:
    ranks = [TrainingSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    first = [indices(s, 5) for s in ranks]
    assert sorted(first[0] + first[1]) == list(range(10))
    second = [indices(s, 10)[5:] for s in ranks]
    assert sorted(second[0] + second[1]) == list(range(10))
    assert first != second  # a new permutation each epoch (set_epoch folded in)


def test_uneven_size_gives_ranks_equal_shares() -> None:
    ranks = [TrainingSampler(7, seed=0, rank=r, world_size=3) for r in range(3)]
    epoch = [indices(s, 3) for s in ranks]
    flat = [i for shard in epoch for i in shard]
    assert len(flat) == 9 and set(flat) == set(range(7))


def test_more_ranks_than_samples() -> None:
    ranks = [TrainingSampler(2, shuffle=False, rank=r, world_size=5) for r in range(5)]
    assert [indices(s, 1)[0] for s in ranks] == [0, 1, 0, 1, 0]


def test_resume_from_position_continues_the_same_stream_with_seeds() -> None:
    full = take(TrainingSampler(9, seed=5, rank=1, world_size=2), 23)
    resumed = take(TrainingSampler(9, seed=5, rank=1, world_size=2, start=11), 12)
    assert resumed == full[11:]
    assert all(isinstance(i, int) and isinstance(s, int) for i, s in full)
    assert len({s for _, s in full}) == len(full)  # fresh augmentation seed per draw


def test_unshuffled_and_different_seeds() -> None:
    assert indices(TrainingSampler(4, shuffle=False, rank=0, world_size=1), 6) == [0, 1, 2, 3, 0, 1]
    a = indices(TrainingSampler(50, seed=0, rank=0, world_size=1), 50)
    b = indices(TrainingSampler(50, seed=1, rank=0, world_size=1), 50)
    assert a != b and sorted(a) == sorted(b)
    with pytest.raises(ValueError, match="empty dataset"):
        TrainingSampler(0)


def test_training_sampler_shards_one_seeded_stream() -> None:
    single = take(TrainingSampler(5, seed=3, rank=0, world_size=1), 20)
    assert sorted(i for i, _ in single[:5]) == list(range(5))      # each pass is a permutation
    assert sorted(i for i, _ in single[5:10]) == list(range(5))
    assert [i for i, _ in single[:5]] != [i for i, _ in single[5:10]]  # reshuffled
    ranks = [take(TrainingSampler(5, seed=3, rank=r, world_size=2), 10) for r in range(2)]
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    assert len({s for _, s in single}) == 20                       # distinct augmentation seeds
    assert take(TrainingSampler(5, seed=4, rank=0, world_size=1), 20) != single


def test_inference_sampler_covers_every_index_once() -> None:
    shards = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [len(InferenceSampler(2, rank=r, world_size=3)) for r in range(3)] == [1, 1, 0]
    assert [len(InferenceSampler(7, rank=r, world_size=3)) for r in range(3)] == [3, 2, 2]


def test_grouped_batches_share_orientation_and_resume() -> None:
    group_ids = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    sampler = TrainingSampler(8, seed=0, rank=0, world_size=1)
    batches = GroupedBatchSampler(sampler, group_ids=group_ids, batch_size=3)
    first = list(itertools.islice(batches, 12))
    for batch in first:
        assert len(batch) == 3 and len({int(group_ids[i]) for i, _ in batch}) == 1
    resumed = GroupedBatchSampler(sampler, group_ids=group_ids, batch_size=3, start_batch=5)
    assert list(itertools.islice(resumed, 7)) == first[5:]


def test_repeat_factors_follow_the_lvis_rule() -> None:
    """Class 0 in 4 of 5 images, 1 in 1 (a fraction 0.2), 2 in 2 (0.4); threshold 0.8:
    r(0) = 1, r(1) = sqrt(0.8 / 0.2) = 2, r(2) = sqrt(2); an image takes its largest, one
    without objects 1; repeated objects of a class count once."""
    classes = [[0], [0, 1, 1], [0, 2], [2, 2, 0], []]
    np.testing.assert_allclose(repeat_factors(classes, 0.8), [1.0, 2.0, 2 ** 0.5, 2 ** 0.5, 1.0])
    np.testing.assert_allclose(repeat_factors(classes, 0.01), [1.0] * 5)
    for threshold in (0.0, -0.5, 1.5, float("nan")):  # NaN factors, or all 1 silently
        with pytest.raises(ValueError, match="repeat threshold must be in"):
            repeat_factors(classes, threshold)


def test_each_pass_draws_an_image_its_factor_times() -> None:
    factors = [1.0, 1.5, 3.0, 1.0, 2.25]
    sampler = TrainingSampler(5, seed=2, rank=0, world_size=1, factors=factors)
    counts = np.array([np.bincount(sampler.pass_keys(epoch)[0], minlength=5)
                       for epoch in range(2000)])
    assert (counts[:, [0, 3]] == 1).all() and (counts[:, 2] == 3).all()
    assert set(counts[:, 1].tolist()) == {1, 2} and set(counts[:, 4].tolist()) == {2, 3}
    np.testing.assert_allclose(counts.mean(axis=0), factors, atol=0.04)
    first, second = sampler.pass_keys(0)[0], sampler.pass_keys(1)[0]
    assert first != second  # shuffled within each pass
    assert len(set(sampler.pass_keys(0)[1])) == len(first)  # a seed per draw


def test_a_repeat_factor_stream_shards_and_resumes_across_passes() -> None:
    """Passes of different lengths: each rank's share, resumed at any step, continues the
    one global stream (0.7 extra draws make passes of 10 to 14 keys)."""
    factors = np.full(10, 1.0)
    factors[[2, 5, 7, 8]] = 1.7
    single = take(TrainingSampler(10, seed=4, rank=0, world_size=1, factors=factors), 90)
    ranks = [take(TrainingSampler(10, seed=4, rank=r, world_size=2, factors=factors), 45)
             for r in range(2)]
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    for start in (3, 6, 17, 31):
        resumed = take(TrainingSampler(10, seed=4, rank=1, world_size=2, factors=factors,
                                       start=start), 10)
        assert resumed == ranks[1][start:start + 10]
    with pytest.raises(ValueError, match=r"repeat factors must be 10 numbers >= 1, got shape "
                                         r"\(9,\)"):
        TrainingSampler(10, factors=factors[:9], rank=0, world_size=1)
    with pytest.raises(ValueError, match=r"smallest 0.5"):
        TrainingSampler(10, factors=np.r_[factors[:9], 0.5], rank=0, world_size=1)
