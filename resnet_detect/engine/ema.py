"""An exponential moving average of the weights (`train.ema_decay`): timm's ModelEmaV2,
mmdetection's EMAHook (momentum = 1 - decay, update_buffers=True).

The average starts as the model's state when training starts (or resumes without one);
after every optimizer step each floating-point tensor of the model's state (weights and
normalisation statistics) moves towards the model's: average = decay * average + (1 - decay)
* model, with the one fixed decay (no warmup: a decay of 0.9998, timm's default, averages
over about 5000 steps from the first on). Integer buffers are copied.

The runner evaluates the average, keeps it in model_best.pth and model_final.pth, and writes
it as a checkpoint's "model" (what tools/eval.py, export and `model.weights` read, as
mmdetection swaps it in), with the weights being trained beside it as "training_weights".
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import ConfigError, is_number
from .distributed import unwrap_model

if TYPE_CHECKING:
    from .trainer import Trainer


def check_ema_decay(value: Any) -> None:
    """train.ema_decay: null (off) or a number strictly between 0 and 1."""
    if value is not None and not (is_number(value) and 0 < value < 1):
        raise ConfigError(f"train.ema_decay must be a number between 0 and 1 (the share of the "
                          f"average kept at each step, e.g. 0.9998; mmdetection's momentum is "
                          f"1 - decay), or null for no average, got {value!r}")


class WeightAverage:
    """The moving average of `model`'s state; a hook (`after_step`) that updates it.

    Args:
        model: the model being trained (a DDP wrapper is unwrapped); the average starts as
            its current state.
        decay: train.ema_decay.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        check_ema_decay(decay)
        self.model = unwrap_model(model)
        self.decay = float(decay)
        self.average = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._floats = [k for k, v in self.average.items() if v.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's state (after an optimizer step)."""
        state = self.model.state_dict()
        if self._floats:
            torch._foreach_lerp_([self.average[k] for k in self._floats],
                                 [state[k].detach() for k in self._floats], 1.0 - self.decay)
        for key, value in self.average.items():
            if not value.is_floating_point():
                value.copy_(state[key])

    def after_step(self, trainer: Trainer) -> None:
        self.update()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """The average a checkpoint holds; RuntimeError if its keys or shapes are not the
        model's."""
        differ = sorted(set(state) ^ set(self.average)) or [
            k for k, v in state.items() if v.shape != self.average[k].shape]
        if differ:
            raise RuntimeError(f"the average's tensors are not the model's: "
                               f"{', '.join(differ[:5])}")
        for key, value in state.items():
            self.average[key].copy_(value)

    def restart(self) -> None:
        """The average is the model's current state."""
        for key, value in self.model.state_dict().items():
            self.average[key].copy_(value)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the average in the block, its own weights again after it."""
        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.average)
        try:
            yield
        finally:
            self.model.load_state_dict(own)

    def copy_to_model(self) -> None:
        """The model holds the average from now on (the end of training)."""
        self.model.load_state_dict(self.average)
