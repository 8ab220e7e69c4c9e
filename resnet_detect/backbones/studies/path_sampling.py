"""Stochastic depth and path sampling for residual nets while training.

A ResNet with n residual blocks is an ensemble of 2^n paths (Veit et al. 2016); these options
train it on a random part of that ensemble at each step. `apply_path_sampling(backbone, ...)`
sets one of three modes on a built backbone:

- "none": the blocks stay as built (a `drop_path_rate` model option still applies).
- "drop_path": per-sample stochastic depth (Huang et al. 2016): block i drops its residual
  branch for each image with probability p_i, kept branches scaled by 1 / (1 - p_i). Schedule
  "linear": p_i = rate * i / (n - 1) for i = 0..n-1 (the backbone's own `drop_path_rate`);
  "uniform": p_i = rate for every block.
- "k_of_n": each training forward pass runs the residual branch of exactly k of the n blocks,
  drawn at random for the batch; the other n - k pass only their shortcut. With `rescale`, the
  kept branches are multiplied by n / k so their expected sum equals the full network's (as
  inverted dropout does).

Evaluation (`model.eval()`) always runs every branch unscaled.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn

from resnet_detect.engine.config import ConfigError

from ..resnet import ResidualBlock, ResNet

MODES = ("none", "drop_path", "k_of_n")
SCHEDULES = ("linear", "uniform")
# The config keys of this option (e.g. under `model.path_sampling`) with their defaults.
PATH_SAMPLING_DEFAULTS: dict[str, Any] = {"mode": "none", "rate": 0.0, "schedule": "linear",
                                          "k": 0, "rescale": True}


def branch_output_module(block: ResidualBlock) -> nn.Module:
    """The last norm of the residual branch: its output is `block.branch(x)`."""
    norms = [name for name, _ in block.named_children()
             if name.startswith("norm") and name[4:].isdigit()]
    if not norms:
        raise ValueError(f"{type(block).__name__} has no norm1..normK layers")
    return getattr(block, max(norms, key=lambda name: int(name[4:])))


def sample_subsets(n: int, k: int, count: int,
                   generator: torch.Generator | None = None) -> list[tuple[int, ...]]:
    """`count` distinct random k-subsets of range(n) (sorted tuples), or all of them when there
    are no more.

    Args:
        n: set size.
        k: subset size, 0..n.
        count: how many subsets to draw.
        generator: torch random generator (None: the global one).
    """
    if not 0 <= k <= n:
        raise ValueError(f"subset size k={k} must be in 0..{n}")
    if math.comb(n, k) <= count:
        return list(itertools.combinations(range(n), k))
    drawn: dict[tuple[int, ...], None] = {}  # in the order drawn
    while len(drawn) < count:
        drawn[tuple(sorted(torch.randperm(n, generator=generator)[:k].tolist()))] = None
    return list(drawn)


def drop_path_rates(n: int, rate: float, schedule: str) -> list[float]:
    """Per-block drop probabilities p_0..p_{n-1} of a schedule."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown model.path_sampling.schedule {schedule!r}; valid: "
                          f"{', '.join(SCHEDULES)}")
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"model.path_sampling.rate (drop probability) must be in [0, 1), got "
                          f"{rate}")
    if schedule == "uniform":
        return [rate] * n
    return [rate * i / max(n - 1, 1) for i in range(n)]


class KOfNPathSampler:
    """Forward hooks on a backbone: exactly k residual branches run per training forward pass.

    The pre-hook draws the k blocks and sets `skip_branch` on the others; the post-hook
    restores the flags, so evaluation and lesion studies see the network unchanged.

    Args:
        backbone: the ResNet to sample paths of.
        k: residual branches kept per forward pass, 1..n.
        rescale: multiply kept branches by n / k.
        generator: torch random generator (None: the global one, seeded by the caller).
    """

    def __init__(self, backbone: ResNet, *, k: int, rescale: bool = True,
                 generator: torch.Generator | None = None) -> None:
        self.blocks = backbone.blocks()
        n = len(self.blocks)
        if not 1 <= k <= n:
            raise ConfigError(f"model.path_sampling.k must be in 1..{n} (the number of blocks), "
                              f"got {k}")
        self.k = k
        self.scale = n / k if rescale else 1.0
        self.generator = generator
        self.active: tuple[int, ...] = tuple(range(n))
        self._saved: list[bool] | None = None
        self._scaling = False
        self._handles = [backbone.register_forward_pre_hook(self._before),
                         backbone.register_forward_hook(self._after)]
        if self.scale != 1.0:
            self._handles += [branch_output_module(b).register_forward_hook(self._rescale)
                              for b in self.blocks]

    def _before(self, module: nn.Module, args: Any) -> None:
        if not module.training:
            return
        self.active = sample_subsets(len(self.blocks), self.k, 1, self.generator)[0]
        self._saved = [b.skip_branch for b in self.blocks]
        for i, block in enumerate(self.blocks):
            block.skip_branch = i not in self.active
        self._scaling = True

    def _after(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._saved is not None:
            for block, flag in zip(self.blocks, self._saved):
                block.skip_branch = flag
        self._saved, self._scaling = None, False

    def _rescale(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        return output * self.scale if self._scaling else None

    def remove(self) -> None:
        """Detach the hooks; the backbone is as built again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def apply_path_sampling(backbone: ResNet, *, mode: str = "none", rate: float = 0.0,
                        schedule: str = "linear", k: int = 0, rescale: bool = True,
                        generator: torch.Generator | None = None) -> KOfNPathSampler | None:
    """Set stochastic depth or k-of-n path sampling on a residual backbone.

    Args:
        backbone: a built ResNet (a Classifier's `.backbone`).
        mode: "none", "drop_path" or "k_of_n" (see the module docstring).
        rate: drop probability of "drop_path" (the last block's for "linear").
        schedule: "linear" or "uniform" ("drop_path").
        k: residual branches per forward pass ("k_of_n").
        rescale: scale kept branches by n / k ("k_of_n").
        generator: random generator of "k_of_n" (None: torch's global one).

    Returns:
        The KOfNPathSampler for "k_of_n" (call `.remove()` to undo), else None.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown model.path_sampling.mode {mode!r}; valid: "
                          f"{', '.join(MODES)}")
    if mode == "none":
        return None
    blocks = backbone.blocks()
    if not all(b.residual for b in blocks):
        raise ConfigError(f"model.path_sampling.mode={mode} needs residual blocks; this backbone "
                          f"is plain (residual=False), where a dropped branch breaks the network")
    if mode == "drop_path":
        for block, p in zip(blocks, drop_path_rates(len(blocks), rate, schedule)):
            block.drop_path_rate = p
        return None
    return KOfNPathSampler(backbone, k=k, rescale=rescale, generator=generator)
