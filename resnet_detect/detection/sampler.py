"""Balanced foreground/background sampling of R candidates (anchors or proposals)."""

from __future__ import annotations

import torch
from torch import Tensor

from resnet_detect.engine.config import ArgumentError


class BalancedSampler:
    """Draws at most ``batch_size_per_image`` candidates, a fraction of them positive.

    Up to ``round_down(batch_size_per_image * positive_fraction)`` positives are drawn;
    negatives fill the rest of the batch when there are enough of them. Each draw is a
    uniformly random subset of the candidates (the largest of one random key per candidate),
    computed without reading a count back to the host: on a GPU nothing waits (torchvision's
    sampler, `nonzero` and `randperm` per image, makes the host wait twice per image).

    Args:
        batch_size_per_image: number of candidates kept per image.
        positive_fraction: largest share of positives in the batch.
    """

    def __init__(self, *, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image <= 0:
            raise ArgumentError(
                f"batch_size_per_image must be positive, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ArgumentError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __call__(self, positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
        """Samples among the positive and negative candidates of one image, or of each row.

        Args:
            positive: (R,) or (N, R) bool, candidates that may be drawn as positives.
            negative: the same shape, bool, candidates that may be drawn as negatives
                (disjoint from ``positive``).

        Returns:
            (drawn positives, drawn negatives): bool masks of the input's shape.
        """
        positive, negative = positive.bool(), negative.bool()
        keys = torch.rand(positive.shape, device=positive.device)
        pos = _largest_keys(positive, keys, int(self.batch_size_per_image * self.positive_fraction))
        limit = self.batch_size_per_image - pos.sum(dim=-1, keepdim=True)
        return pos, _largest_keys(negative, keys, self.batch_size_per_image, limit)


def _largest_keys(candidates: Tensor, keys: Tensor, k: int, limit: Tensor | None = None) -> Tensor:
    """Mask of the candidates with the k (per row: `limit`, at most k) largest keys."""
    k = min(k, candidates.shape[-1])
    top = torch.where(candidates, keys, -1.0).topk(k, dim=-1)  # keys are in [0, 1)
    chosen = top.values >= 0
    if limit is not None:
        chosen &= torch.arange(k, device=keys.device) < limit
    return torch.zeros_like(candidates).scatter(-1, top.indices, chosen)
