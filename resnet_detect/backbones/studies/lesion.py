"""Lesion study (Veit et al. 2016, figs. 3 and 5): delete residual branches at test time.

A deleted block keeps only its shortcut (`skip_branch=True`: relu(shortcut(x))). A residual
net survives most single deletions, and its accuracy falls smoothly with the number k of
blocks deleted at random; a plain net (whose "shortcut" is a bare pass-through) breaks.

Shapes: (N, 3, S, S) normalized images, (N,) labels; n blocks.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..resnet import ResidualBlock, ResNet
from .path_sampling import sample_subsets
from .training import accuracy

logger = logging.getLogger(__name__)


def is_downsampling(block: ResidualBlock) -> bool:
    """True for a block that changes resolution or width (its shortcut is not the identity)."""
    return block.stride != 1 or block.in_channels != block.out_channels


@contextmanager
def deleted_blocks(blocks: Sequence[ResidualBlock], indices: Sequence[int]) -> Iterator[None]:
    """Within the context, blocks[i] for i in `indices` run without their residual branch."""
    saved = [b.skip_branch for b in blocks]
    try:
        for i in indices:
            blocks[i].skip_branch = True
        yield
    finally:
        for block, flag in zip(blocks, saved):
            block.skip_branch = flag


def single_block_lesions(model: nn.Module, backbone: ResNet, images: torch.Tensor,
                         labels: torch.Tensor, *, batch_size: int = 256) -> list[float]:
    """Accuracy (%) with block i deleted, for every block i in network order.

    Args:
        model: the classifier.
        backbone: the ResNet inside it.
        images: normalized (N, 3, S, S).
        labels: (N,).
        batch_size: images per forward pass.
    """
    blocks = backbone.blocks()
    results = []
    for i in range(len(blocks)):
        with deleted_blocks(blocks, [i]):
            results.append(accuracy(model, images, labels, batch_size=batch_size))
    return results


def warn_of_max_k_past_the_blocks(max_k: int, blocks: int, net: str) -> None:
    """lesion.max_k above a net's blocks deletes them all at most (as 0 does): said, not
    silently clamped."""
    if max_k > blocks:
        logger.warning("lesion.max_k=%d is above the %d blocks of %s: k runs from 1 to %d "
                       "(as with lesion.max_k=0)", max_k, blocks, net, blocks)


def random_lesions(model: nn.Module, backbone: ResNet, images: torch.Tensor,
                   labels: torch.Tensor, *, draws: int, max_k: int = 0,
                   generator: torch.Generator | None = None,
                   batch_size: int = 256) -> dict[int, list[tuple[tuple[int, ...], float]]]:
    """Accuracy (%) with k random blocks deleted, for k = 1..max_k, `draws` draws per k.

    When there are at most `draws` ways to choose k blocks, each is tried once.

    Args:
        model, backbone, images, labels, batch_size: as in `single_block_lesions`.
        draws: random block sets per k.
        max_k: largest k (0: every block).
        generator: for the draws.

    Returns:
        {k: [(deleted block indices, accuracy), ...]}.
    """
    blocks = backbone.blocks()
    n = len(blocks)
    max_k = n if max_k <= 0 else min(max_k, n)
    results: dict[int, list[tuple[tuple[int, ...], float]]] = {}
    for k in range(1, max_k + 1):
        results[k] = []
        for subset in sample_subsets(n, k, draws, generator):
            with deleted_blocks(blocks, subset):
                results[k].append((subset, accuracy(model, images, labels,
                                                    batch_size=batch_size)))
    return results
