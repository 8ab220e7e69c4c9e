"""Effective paths (Veit et al. 2016, fig. 6): how long are the paths the gradient uses?

A net with n residual blocks has C(n, k) paths through exactly k residual branches, so path
lengths follow Binomial(n, 1/2). The gradient along paths of length k is measured as in the
paper: a batch goes forward through the whole net; backward, it crosses the residual branch
of k sampled blocks and the shortcut of the other n - k (each ReLU's derivative taken at the
full network's activation), and its magnitude is read at the input of the first block.
The product distribution x magnitude shows which path lengths carry the gradient.

Shapes: (N, 3, S, S) normalized images -> block inputs x_i (N, C_i, H_i, W_i); the gradient
magnitude of a sample is the L2 norm of d loss / d x_0 over (C_0, H_0, W_0), averaged over N.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..classifier import Classifier
from .path_sampling import sample_subsets


def path_length_distribution(n: int) -> list[float]:
    """P(length = k) = C(n, k) / 2^n for k = 0..n."""
    if n < 0:
        raise ValueError(f"number of blocks must be >= 0, got {n}")
    return [math.comb(n, k) / 2 ** n for k in range(n + 1)]


@dataclass
class _BlockGraph:
    """One block's forward graph, kept for backward passes along chosen routes."""

    inputs: torch.Tensor    # x_i, a leaf requiring grad
    shortcut: torch.Tensor  # shortcut(x_i)
    branch: torch.Tensor    # branch(x_i)
    active: torch.Tensor    # relu'(shortcut + branch): bool mask


class PathGradients:
    """The forward graph of one batch, from which gradients along any route are read.

    Args:
        model: a residual classifier (every block residual); put in evaluation mode.
        images: normalized (N, 3, S, S).
        labels: (N,).
    """

    def __init__(self, model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> None:
        backbone = model.backbone
        self.blocks = backbone.blocks()
        if not all(b.residual for b in self.blocks):
            raise ValueError("path gradients need a residual net; this one is plain")
        if any(b.skip_branch for b in self.blocks):
            raise ValueError("a block has skip_branch set; undo the lesion first")
        model.eval()
        device = next(model.parameters()).device
        x = backbone.stem(images.to(device)).detach()
        self.graphs: list[_BlockGraph] = []
        for block in self.blocks:
            inputs = x.detach().requires_grad_(True)
            shortcut, branch = block.shortcut(inputs), block.branch(inputs)
            pre = shortcut + branch
            self.graphs.append(_BlockGraph(inputs, shortcut, branch, pre > 0))
            x = F.relu(pre)
        features = x.detach().requires_grad_(True)
        # Classifier head: global average pool, fc (see backbones.classifier).
        self.logits = model.fc(torch.flatten(features.mean(dim=(2, 3)), 1))
        # Summed loss: each sample's gradient is that of its own loss (BN in eval mode).
        loss = F.cross_entropy(self.logits, labels.to(device), reduction="sum")
        (self.output_grad,) = torch.autograd.grad(loss, features)

    def input_gradient(self, through_branch: Sequence[int]) -> torch.Tensor:
        """d loss / d x_0 (N, C_0, H_0, W_0) along the route through the branches of the
        blocks in `through_branch` and the shortcuts of the others."""
        chosen = set(through_branch)
        grad = self.output_grad
        for i in reversed(range(len(self.graphs))):
            graph = self.graphs[i]
            grad = grad * graph.active
            target = graph.branch if i in chosen else graph.shortcut
            if target is graph.inputs:  # identity shortcut
                continue
            (grad,) = torch.autograd.grad(target, graph.inputs, grad, retain_graph=True)
        return grad

    def magnitude(self, through_branch: Sequence[int]) -> float:
        """Mean over the batch of the per-sample L2 norm of `input_gradient`."""
        grad = self.input_gradient(through_branch)
        return grad.flatten(1).norm(dim=1).mean().item()


def path_gradient_magnitudes(model: Classifier, batches: Sequence[tuple[torch.Tensor,
                                                                        torch.Tensor]], *,
                             samples_per_k: int, generator: torch.Generator | None = None
                             ) -> list[list[float]]:
    """Gradient magnitudes along sampled paths of every length k = 0..n.

    Args:
        model: a residual classifier.
        batches: (normalized images, labels) pairs; each is measured with its own routes.
        samples_per_k: routes per length and batch (all of them when there are fewer).
        generator: for the routes.

    Returns:
        magnitudes[k]: one value per (batch, route).
    """
    n = len(model.backbone.blocks())
    magnitudes: list[list[float]] = [[] for _ in range(n + 1)]
    for images, labels in batches:
        graph = PathGradients(model, images, labels)
        for k in range(n + 1):
            for subset in sample_subsets(n, k, samples_per_k, generator):
                magnitudes[k].append(graph.magnitude(subset))
    return magnitudes


def effective_paths(distribution: Sequence[float], magnitude: Sequence[float]) -> list[float]:
    """Share of the total gradient magnitude carried by each path length: P(k) m(k) / sum."""
    product = [p * m for p, m in zip(distribution, magnitude)]
    total = sum(product)
    if total <= 0:
        raise ValueError("all path gradients are zero")
    return [v / total for v in product]
