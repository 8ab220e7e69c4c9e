"""Balanced sampler: counts, fraction, no duplicates, and torchvision's draws."""

import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from detection.sampler import BalancedSampler


def _labels(num_pos: int, num_neg: int, num_ignore: int) -> torch.Tensor:
    labels = torch.cat([torch.ones(num_pos), torch.zeros(num_neg), -torch.ones(num_ignore)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def test_counts() -> None:
    sampler = BalancedSampler(batch_size_per_image=256, positive_fraction=0.5)
    for (num_pos, num_neg), (exp_pos, exp_neg) in {
        (10, 1000): (10, 246),  # few positives: negatives fill the batch
        (500, 1000): (128, 128),  # capped at the fraction
        (500, 50): (128, 50),  # few negatives: the batch stays short
        (0, 0): (0, 0),
    }.items():
        labels = _labels(num_pos, num_neg, 30)
        pos, neg = sampler(labels == 1, labels == 0)
        assert (len(pos), len(neg)) == (exp_pos, exp_neg)
        assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())
        assert len(set(pos.tolist())) == len(pos) and len(set(neg.tolist())) == len(neg)


def test_fraction_rounds_down() -> None:
    sampler = BalancedSampler(batch_size_per_image=512, positive_fraction=0.25)
    labels = _labels(1000, 1000, 0)
    pos, neg = sampler(labels == 1, labels == 0)
    assert (len(pos), len(neg)) == (128, 384)


def test_same_draws_as_torchvision() -> None:
    labels = _labels(300, 2000, 100)
    torch.manual_seed(7)
    pos, neg = BalancedSampler(batch_size_per_image=256, positive_fraction=0.5)(
        labels == 1, labels == 0
    )
    torch.manual_seed(7)
    ref_pos, ref_neg = BalancedPositiveNegativeSampler(256, 0.5)([labels])
    assert torch.equal(pos.sort().values, torch.nonzero(ref_pos[0]).flatten())
    assert torch.equal(neg.sort().values, torch.nonzero(ref_neg[0]).flatten())
