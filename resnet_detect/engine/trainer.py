"""The iteration-based training loop every task shares.

One step: `losses = step_fn(model, next(data))` (a dict of `loss_*` scalars) under autocast,
a NaN guard agreed on by all processes, backward of their sum (through a GradScaler for
fp16), optional gradient clipping, optimizer step, scheduler step, then the hooks. With
`accumulation_steps` A, a step draws A batches and backpropagates each one's losses / A
before the one optimizer step (under DDP the gradients are averaged over the processes once,
at the last), which is the step of one A times larger batch where the losses are means over
equal shares of it (BatchNorm statistics excepted: they see one batch at a time).

Distributed training wraps the model in DistributedDataParallel *before* handing it to the
Trainer (the Trainer never wraps); step_fn receives that wrapped model. Everything else
(checkpointing, evaluation, logging) is a hook: an object with any of `before_train(trainer)`,
`after_step(trainer)` and `after_train(trainer)`. `after_train` runs only when training
finishes; an exception (including the NaN guard's) skips it.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

import torch
from torch import nn

from .amp import AMP_DTYPES, amp_for_device
from .distributed import any_process, get_rank, get_world_size, sum_over_processes
from .preemption import StopRequest

logger = logging.getLogger(__name__)
StepFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in evaluation mode for the block, then in the mode it was in (an error too)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Hook(Protocol):
    """Any subset of these methods; the Trainer calls those present."""

    def before_train(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer) -> None: ...

    def after_train(self, trainer: Trainer) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite on at least one process."""


def check_finite_weights(parameters: Sequence[torch.Tensor], when: str) -> None:
    """Raise when a weight is infinite or NaN (the same on every process: their weights are
    one); `when`, for the message."""
    if parameters and not bool(torch.stack([torch.isfinite(p).all() for p in parameters]).all()):
        raise NonFiniteLossError(f"the weights are not finite {when}; training stopped on every "
                                 f"process. Lower the learning rate or enable gradient clipping.")


class Trainer:
    """Runs `max_iter` optimizer steps.

    Attributes read by hooks: `iter` (steps done so far), `start_iter`, `max_iter`, `model`,
    `optimizer`, `scheduler`, `scaler`, `loss_dict` (the last step's losses, detached),
    `step_lr` (the learning rate of its first parameter group that step used),
    `step_seconds` and `data_seconds` (its time, batch included, and the batch's alone:
    the hooks' time, evaluations and checkpoints, is in neither), `losses_count` (True
    unless step_fn set it False: the step's losses are zeros standing in for a batch that
    could not be read, which the progress line leaves out of its averages; an accumulated
    step with a readable batch counts: its average leaves the empty ones out),
    `empty_batches` (the step's batches that `batch_is_empty` found empty).

    Args:
        model: the model in training mode (DDP-wrapped when distributed).
        optimizer: its optimizer.
        scheduler: stepped once per iteration (or None).
        step_fn: (model, batch) -> {"loss_*": scalar tensor}; the sum is minimised.
        max_iter: total number of steps of the run (resumed runs included).
        amp: None (off), "bf16" or "fp16" (`parse_amp`); fp16 only on a GPU, bf16 also on
            CPUs with bf16 kernels; elsewhere ignored with a warning (`amp_for_device`).
        clip_grad_norm: max total gradient norm (None: no clipping).
        hooks: run in the given order after every step.
        accumulation_steps: batches drawn and backpropagated per optimizer step.
        batch_is_empty: tells a batch with nothing to learn from (every image unreadable);
            an accumulated step averages over the other batches only.
    """

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, step_fn: StepFn, max_iter: int, amp: str | None = None,
                 clip_grad_norm: float | None = None, hooks: Sequence[Any] = (),
                 accumulation_steps: int = 1,
                 batch_is_empty: Callable[[Any], bool] | None = None) -> None:
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        if (isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int)
                or accumulation_steps < 1):
            raise ValueError(f"accumulation_steps must be a positive int, got "
                             f"{accumulation_steps!r}")
        self.accumulation_steps = accumulation_steps
        self.batch_is_empty = batch_is_empty
        self.device_type = next(model.parameters()).device.type
        amp = amp_for_device(amp, self.device_type)
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.step_fn = step_fn
        self.max_iter = int(max_iter)
        self.amp_dtype = AMP_DTYPES[amp] if amp else None
        self.scaler = torch.amp.GradScaler(self.device_type if amp == "fp16" else "cpu",
                                           enabled=amp == "fp16")
        self.clip_grad_norm = clip_grad_norm
        self.hooks = list(hooks)
        self.iter = self.start_iter = 0
        self.loss_dict: dict[str, torch.Tensor] = {}
        self.step_lr = 0.0
        self.grad_norm: torch.Tensor | None = None  # the last step's, where clipped
        self.step_seconds = self.data_seconds = 0.0
        self.losses_count = True
        self.empty_batches = 0

    def register_hooks(self, *hooks: Any) -> None:
        """Append hooks (for those that need the trainer's scaler, e.g. a Checkpointer)."""
        self.hooks.extend(hooks)

    def _call_hooks(self, stage: str) -> None:
        for hook in self.hooks:
            method = getattr(hook, stage, None)
            if method is not None:
                method(self)

    def train(self, data: Iterator[Any], start_iter: int = 0,
              stop: StopRequest | None = None) -> bool:
        """Run steps start_iter .. max_iter - 1, drawing `accumulation_steps` batches per step
        from `data`.

        Args:
            data: batches.
            start_iter: steps already done (a resumed run).
            stop: checked after every step (and its hooks); when it was requested on any
                process, every process returns at the same iteration, before `after_train`.

        Returns:
            True when all max_iter steps ran, False when `stop` ended the run early.

        Raises:
            NonFiniteLossError: on every process, when any process's loss is not finite.
        """
        self.iter = self.start_iter = int(start_iter)
        self.model.train()
        self._call_hooks("before_train")
        while self.iter < self.max_iter:
            started = time.perf_counter()
            self.losses_count = True
            if self.accumulation_steps == 1:
                batch = next(data)
                self.data_seconds = time.perf_counter() - started
                self.run_step(batch)
                del batch  # not held through the hooks (an evaluation's memory)
            else:
                self.data_seconds = self._accumulated_step(data)
            self.step_seconds = time.perf_counter() - started
            self.iter += 1
            self._call_hooks("after_step")
            if (stop is not None and self.iter < self.max_iter
                    and any_process(stop.requested)):
                return False
        self._call_hooks("after_train")
        return True

    def _losses(self, batch: Any, with_images: int = 1
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
        """step_fn's losses of `batch` (under autocast), their finite sum, and `with_images`
        (this process's batches with something to learn from) summed over the processes
        (in the collective of the finiteness check: no other wait)."""
        autocast = (torch.autocast(self.device_type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else nullcontext())
        with autocast:
            loss_dict = dict(self.step_fn(self.model, batch))
        if not loss_dict:
            raise ValueError("step_fn returned no losses")
        total = sum(loss_dict.values())
        return loss_dict, total, self._check_finite(total, loss_dict, with_images)

    def _has_images(self, batch: Any) -> int:
        return int(self.batch_is_empty is None or not self.batch_is_empty(batch))

    def run_step(self, batch: Any) -> None:
        self.empty_batches = 1 - self._has_images(batch)
        loss_dict, total, with_images = self._losses(batch, 1 - self.empty_batches)
        self.optimizer.zero_grad(set_to_none=True)
        share = _share(with_images)
        self.scaler.scale(total if share == 1.0 else total / share).backward()
        self._optimizer_step()
        self.loss_dict = {k: v.detach() for k, v in loss_dict.items()}

    def _optimizer_step(self) -> None:
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            # (on the device: read at the logged steps only)
            self.grad_norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        self.step_lr = float(self.optimizer.param_groups[0]["lr"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.iter + 1 == self.max_iter:  # (earlier steps': a checkpoint or the next loss)
            check_finite_weights([p for g in self.optimizer.param_groups for p in g["params"]],
                                 f"after the last step (iteration {self.iter}, 0-based step "
                                 f"index)")

    def _accumulated_step(self, data: Iterator[Any]) -> float:
        """One optimizer step over `accumulation_steps` batches; returns the seconds spent
        waiting for them.

        All are drawn before the first forward: a batch that cannot be made stops the run
        between steps (a checkpoint saved then resumes exactly: no random number of the step
        drawn yet). The losses are averaged over the batches with something to learn from,
        as one batch's are over its readable images."""
        steps = self.accumulation_steps
        before = time.perf_counter()
        batches: list[Any] = [next(data) for _ in range(steps)]
        waited = time.perf_counter() - before
        with_images = sum(self._has_images(batch) for batch in batches)
        self.empty_batches = steps - with_images
        share = 1.0  # (set by the first batch's losses, before any backward)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for i in range(steps):
            batch, batches[i] = batches[i], None
            # DDP averages the gradients over the processes at the last backward only
            no_sync = getattr(self.model, "no_sync", None)
            with (no_sync() if no_sync is not None and i < steps - 1 else nullcontext()):
                loss_dict, total, everywhere = self._losses(batch, with_images if i == 0 else 0)
                if i == 0:
                    share = _share(everywhere)
                self.scaler.scale(total / share).backward()
            del batch
            for k, v in loss_dict.items():
                sums[k] = sums[k] + v.detach() if k in sums else v.detach()
        self._optimizer_step()
        self.loss_dict = {k: v / max(1, with_images) for k, v in sums.items()}
        if with_images:  # zeros stood in for the empty batches only: the average is true
            self.losses_count = True
        return waited

    def _check_finite(self, total: torch.Tensor, loss_dict: Mapping[str, torch.Tensor],
                      with_images: int) -> float:
        """Raise on every process when a loss is not finite on one; else `with_images` summed
        over the processes."""
        local_bad = not math.isfinite(total.item())
        bad, everywhere = sum_over_processes(local_bad, with_images)
        if bad:
            if local_bad:
                terms = ", ".join(f"{k}={v.item():.4g}" for k, v in loss_dict.items())
                detail = f"on this process (rank {get_rank()}): {terms}"
            else:
                detail = "on another process"
            raise NonFiniteLossError(
                f"loss is not finite at iteration {self.iter} (0-based step index) {detail}; "
                f"training stopped on every process. Lower the learning rate, enable gradient "
                f"clipping or check the data.")
        return everywhere


def _share(with_images: float) -> float:
    """What each process divides its losses by: the batches with images over all processes,
    per process. DDP averages the gradients over every process, an empty batch's zeros
    included: a process whose batches were all unreadable would otherwise shrink the step of
    the others (by 1/2 for one of two processes). 1 where every batch has images."""
    return max(with_images, 1.0) / get_world_size()


class PeriodicEval:
    """Hook: run `eval_fn()` every `period` iterations and once after training.

    `eval_fn` runs on every process (it may all-reduce) and returns scalar metrics, which
    are passed to `on_result(metrics, iteration)`. The model is put back in training mode.

    Args:
        period: iterations between evaluations (0: only after training).
        eval_fn: () -> {"metric": value}.
        on_result: what to do with the metrics (log them, keep them).
    """

    def __init__(self, period: int, eval_fn: Callable[[], Mapping[str, float]],
                 on_result: Callable[[Mapping[str, float], int], None] | None = None) -> None:
        self.period = period
        self.eval_fn = eval_fn
        self.on_result = on_result
        self.last_result: dict[str, float] = {}
        self._last_iter = -1

    def evaluate_now(self, trainer: Trainer) -> None:
        """Evaluate at `trainer.iter` (also a resumed run's evaluation that a stop ended)."""
        self.last_result = dict(self.eval_fn())
        self._last_iter = trainer.iter
        trainer.model.train()
        if self.on_result is not None:
            self.on_result(self.last_result, trainer.iter)

    def after_step(self, trainer: Trainer) -> None:
        if self.period and trainer.iter % self.period == 0 and trainer.iter != trainer.max_iter:
            self.evaluate_now(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if self._last_iter != trainer.iter:
            self.evaluate_now(trainer)
