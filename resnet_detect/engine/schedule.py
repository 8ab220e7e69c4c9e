"""Learning-rate schedules by iteration: linear warmup, then cosine, poly or multi-step decay.

The learning rate at iteration i (0-based, the i-th optimizer step) is
`base_lr * warmup(i) * decay(i)`, with

- cosine: decay(i) = final + (1 - final) * (1 + cos(pi * i / max_iter)) / 2
- poly:   decay(i) = final + (1 - final) * (1 - i / max_iter) ** power (the DeepLab papers',
  mmsegmentation's and torchvision's segmentation recipes)
- step:   decay(i) = gamma ** (number of milestones <= i)
- warmup: for i < warmup_iters, warmup_factor + (1 - warmup_factor) * i / warmup_iters,
  else 1 (the warmup multiplies the decayed value, as in detectron2).
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

DECAYS = ("cosine", "poly", "step")


class WarmupDecay:
    """The multiplier of the base learning rate at iteration i; picklable as plain values.

    Args:
        max_iter: total optimizer steps.
        decay: "cosine", "poly" or "step".
        steps: iterations at which "step" multiplies the rate by `gamma` (increasing).
        gamma: step decay factor.
        final_factor: the cosine and poly schedules end at base_lr * final_factor.
        power: the exponent of "poly".
        warmup_iters: length of the linear warmup (0 for none).
        warmup_factor: multiplier at iteration 0 of the warmup.
    """

    def __init__(self, *, max_iter: int, decay: str = "cosine", steps: Sequence[int] = (),
                 gamma: float = 0.1, final_factor: float = 0.0, power: float = 0.9,
                 warmup_iters: int = 0, warmup_factor: float = 0.001) -> None:
        if decay not in DECAYS:
            raise ValueError(f"unknown lr decay {decay!r}; valid: {', '.join(DECAYS)}")
        if max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        if any(not float(s).is_integer() for s in steps):
            raise ValueError(f"lr steps must be whole iterations, got {list(steps)}")
        steps = [int(s) for s in steps]
        if steps != sorted(steps) or any(s <= 0 or s > max_iter for s in steps):
            raise ValueError(f"lr steps must be increasing iterations in 1..{max_iter}, "
                             f"got {steps}")
        if not power > 0:
            raise ValueError(f"lr_power must be positive, got {power}")
        if warmup_iters < 0 or not 0.0 <= warmup_factor <= 1.0:
            raise ValueError(f"warmup_iters must be >= 0 and warmup_factor in [0, 1], got "
                             f"{warmup_iters} and {warmup_factor}")
        self.max_iter = int(max_iter)
        self.decay = decay
        self.steps = steps
        self.gamma = float(gamma)
        self.final_factor = float(final_factor)
        self.power = float(power)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, i: int) -> float:
        progress = min(i, self.max_iter) / self.max_iter
        if self.decay == "cosine":
            factor = self.final_factor + (1.0 - self.final_factor) * 0.5 * (
                1.0 + math.cos(math.pi * progress))
        elif self.decay == "poly":
            factor = self.final_factor + (1.0 - self.final_factor) * (1.0 - progress) ** self.power
        else:
            factor = self.gamma ** bisect.bisect_right(self.steps, i)
        if i < self.warmup_iters:
            alpha = i / self.warmup_iters
            factor *= self.warmup_factor * (1.0 - alpha) + alpha
        return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, *, max_iter: int,
                       decay: str = "cosine", steps: Sequence[int] = (), gamma: float = 0.1,
                       final_factor: float = 0.0, power: float = 0.9, warmup_iters: int = 0,
                       warmup_factor: float = 0.001) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration with the `WarmupDecay` multiplier.

    Its state dict holds only plain values, so it round-trips through
    `torch.load(weights_only=True)`. Arguments as in `WarmupDecay`.
    """
    multiplier = WarmupDecay(max_iter=max_iter, decay=decay, steps=steps, gamma=gamma,
                             final_factor=final_factor, power=power, warmup_iters=warmup_iters,
                             warmup_factor=warmup_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def restore_position(scheduler: Any, state: Mapping[str, Any]) -> None:
    """Move `scheduler` to the position its saved `state` had and set the optimizer's learning
    rates for it. A LambdaLR keeps its own multiplier and base rates (this run's schedule, e.g.
    a longer one); any other scheduler loads the whole state."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.load_state_dict(state)
        return
    scheduler.last_epoch = int(state["last_epoch"])
    scheduler._step_count = int(state.get("_step_count", scheduler.last_epoch + 1))
    lrs = [base * multiplier(scheduler.last_epoch)
           for base, multiplier in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
