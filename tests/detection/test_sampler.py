"""Balanced sampler: counts, fraction, no draw outside the candidates, rows drawn apart, and
uniformly random draws."""

import pytest
import torch

from resnet_detect.detection.sampler import BalancedSampler


def _labels(num_pos: int, num_neg: int, num_ignore: int, seed: int = 0) -> torch.Tensor:
    labels = torch.cat([torch.ones(num_pos), torch.zeros(num_neg), -torch.ones(num_ignore)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize(("num_pos", "num_neg", "expected"), [
    (10, 1000, (10, 246)),  # few positives: negatives fill the batch
    (500, 1000, (128, 128)),  # capped at the fraction
    (500, 50, (128, 50)),  # few negatives: the batch stays short
    (0, 0, (0, 0)),
    (0, 100, (0, 100)),
])
def test_counts(num_pos, num_neg, expected) -> None:
    sampler = BalancedSampler(batch_size_per_image=256, positive_fraction=0.5)
    labels = _labels(num_pos, num_neg, 30)
    pos, neg = sampler(labels == 1, labels == 0)
    assert pos.dtype == neg.dtype == torch.bool and pos.shape == neg.shape == labels.shape
    assert (int(pos.sum()), int(neg.sum())) == expected
    assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())


def test_fraction_rounds_down_and_fewer_candidates_than_the_batch() -> None:
    sampler = BalancedSampler(batch_size_per_image=512, positive_fraction=0.25)
    labels = _labels(1000, 1000, 0)
    pos, neg = sampler(labels == 1, labels == 0)
    assert (int(pos.sum()), int(neg.sum())) == (128, 384)
    odd = BalancedSampler(batch_size_per_image=10, positive_fraction=0.25)  # 2.5 positives
    assert [int(m.sum()) for m in odd(labels == 1, labels == 0)] == [2, 8]  # torchvision's floor
    # int(10 * 0.15) = 1 (torchvision's int()), where rounding 1.5 would give 2
    tenth = BalancedSampler(batch_size_per_image=10, positive_fraction=0.15)
    assert [int(m.sum()) for m in tenth(labels == 1, labels == 0)] == [1, 9]
    few = _labels(3, 4, 2)  # 9 candidates, batch of 512
    pos, neg = sampler(few == 1, few == 0)
    assert torch.equal(pos, few == 1) and torch.equal(neg, few == 0)
    pos, neg = sampler((labels == 1).to(torch.uint8), (labels == 0).to(torch.uint8))  # 0/1 masks
    assert pos.dtype == torch.bool and (int(pos.sum()), int(neg.sum())) == (128, 384)
    empty = torch.zeros(0, dtype=torch.bool)
    assert [m.shape for m in sampler(empty, empty)] == [(0,), (0,)]


def test_rows_are_sampled_apart() -> None:
    """(N, R): each image its own counts and its own draws."""
    sampler = BalancedSampler(batch_size_per_image=64, positive_fraction=0.5)
    labels = torch.stack([_labels(5, 500, 205, seed=1), _labels(200, 500, 10, seed=2),
                          _labels(0, 20, 690, seed=3), _labels(200, 500, 10, seed=2)])
    pos, neg = sampler(labels == 1, labels == 0)
    assert pos.sum(1).tolist() == [5, 32, 0, 32] and neg.sum(1).tolist() == [59, 32, 20, 32]
    assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())
    assert not torch.equal(pos[1], pos[3])  # the same candidates, other draws


def test_every_candidate_is_drawn_equally_often() -> None:
    """10 of 40 positives and 20 of 80 negatives, 4000 times: each candidate ~1000 times."""
    sampler = BalancedSampler(batch_size_per_image=30, positive_fraction=1 / 3)
    labels = _labels(40, 80, 40).expand(4000, -1)
    torch.manual_seed(0)
    pos, neg = sampler(labels == 1, labels == 0)
    for drawn, candidates in ((pos, labels[0] == 1), (neg, labels[0] == 0)):
        counts = drawn.sum(0)[candidates].float()
        # binomial(4000, 1/4): sd 27; a sampler favouring low indices or early keys is far off
        assert (counts - 1000).abs().max() < 120, counts
        assert int(drawn.sum(0)[~candidates].sum()) == 0
