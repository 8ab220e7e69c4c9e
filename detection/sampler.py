"""Balanced foreground/background sampling of R candidates (anchors or proposals)."""

from __future__ import annotations

import torch
from torch import Tensor


class BalancedSampler:
    """Draws at most ``batch_size_per_image`` candidates, a fraction of them positive.

    Up to ``round_down(batch_size_per_image * positive_fraction)`` positives are drawn;
    negatives fill the rest of the batch when there are enough of them. Draws use
    ``torch.randperm`` on the global generator, positives first then negatives, the
    same sequence of random calls as torchvision's sampler.

    Args:
        batch_size_per_image: number of candidates kept per image.
        positive_fraction: largest share of positives in the batch.
    """

    def __init__(self, *, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image <= 0:
            raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __call__(self, positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
        """Samples indices among positive and negative candidates of one image.

        Args:
            positive: (R,) bool, candidates that may be drawn as positives.
            negative: (R,) bool, candidates that may be drawn as negatives.

        Returns:
            Indices (into R) of the drawn positives and of the drawn negatives.
        """
        pos_candidates = torch.nonzero(positive, as_tuple=True)[0]
        neg_candidates = torch.nonzero(negative, as_tuple=True)[0]
        num_pos = min(
            pos_candidates.numel(), int(self.batch_size_per_image * self.positive_fraction)
        )
        num_neg = min(neg_candidates.numel(), self.batch_size_per_image - num_pos)
        pos_perm = torch.randperm(pos_candidates.numel(), device=positive.device)[:num_pos]
        neg_perm = torch.randperm(neg_candidates.numel(), device=negative.device)[:num_neg]
        return pos_candidates[pos_perm], neg_candidates[neg_perm]
