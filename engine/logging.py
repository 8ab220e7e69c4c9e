"""Console logging, tensorboard scalars and the progress line (iteration, losses, lr, it/s, ETA).

Only the main process writes tensorboard events and INFO lines; other ranks log warnings.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .distributed import all_reduce_mean, get_rank, is_main_process

if TYPE_CHECKING:
    from .trainer import Trainer


def setup_logging(output_dir: str | os.PathLike | None = None, name: str = "") -> None:
    """INFO to stdout on the main process (WARNING elsewhere), and to output_dir/log.txt."""
    root = logging.getLogger(name)
    root.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    for handler in list(root.handlers):
        if getattr(handler, "_engine_handler", False):
            root.removeHandler(handler)
    prefix = "" if is_main_process() else f"[rank {get_rank()}] "
    fmt = logging.Formatter(f"%(asctime)s {prefix}%(message)s", datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if output_dir is not None and is_main_process():
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / "log.txt"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._engine_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)


class ScalarWriter:
    """Tensorboard SummaryWriter on the main process; a no-op elsewhere or without log_dir."""

    def __init__(self, log_dir: str | os.PathLike | None) -> None:
        self._writer = None
        if log_dir is not None and is_main_process():
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when used
            self._writer = SummaryWriter(log_dir=str(log_dir))

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


class ProgressLogger:
    """Hook: every `period` iterations, log mean losses (over the period and all processes),
    lr, it/s and ETA, and write them as tensorboard scalars.

    Args:
        period: iterations between lines (the last iteration is always logged).
        writer: where scalars go.
        logger: the python logger of the progress line.
    """

    def __init__(self, period: int, writer: ScalarWriter | None = None,
                 logger: logging.Logger | None = None) -> None:
        if period <= 0:
            raise ValueError(f"log period must be positive, got {period}")
        self.period = period
        self.writer = writer or ScalarWriter(None)
        self.logger = logger or logging.getLogger("engine")
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def before_train(self, trainer: Trainer) -> None:
        self._start_time = self._last_time = time.perf_counter()
        self._last_iter = trainer.iter

    def after_step(self, trainer: Trainer) -> None:
        for key, value in trainer.loss_dict.items():
            self._sums[key] = self._sums.get(key, 0.0) + value.detach().float()
        self._count += 1
        if trainer.iter % self.period and trainer.iter != trainer.max_iter:
            return
        losses = all_reduce_mean({k: v / self._count for k, v in self._sums.items()})
        losses["total_loss"] = sum(losses.values())
        self._sums, self._count = {}, 0
        now = time.perf_counter()
        its = (trainer.iter - self._last_iter) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_iter = now, trainer.iter
        lr = trainer.optimizer.param_groups[0]["lr"]
        eta = format_eta((trainer.max_iter - trainer.iter) / max(its, 1e-9))
        terms = "  ".join(f"{k}={v:.4f}" for k, v in sorted(losses.items()))
        self.logger.info("iter %d/%d  %s  lr=%.5g  %.2f it/s  eta %s", trainer.iter,
                         trainer.max_iter, terms, lr, its, eta)
        self.writer.add_scalars({**{f"train/{k}": v for k, v in losses.items()},
                                 "train/lr": lr, "train/it_per_s": its}, trainer.iter)

    def after_train(self, trainer: Trainer) -> None:
        total = time.perf_counter() - self._start_time
        self.logger.info("trained %d iterations in %s", trainer.iter - trainer.start_iter,
                         format_eta(total))


def log_metrics(metrics: Mapping[str, Any], step: int, writer: ScalarWriter | None = None,
                prefix: str = "val", logger: logging.Logger | None = None) -> None:
    """One INFO line and tensorboard scalars for evaluation results."""
    logger = logger or logging.getLogger("engine")
    logger.info("eval @ iter %d: %s", step,
                "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in metrics.items()))
    if writer is not None:
        writer.add_scalars({f"{prefix}/{k}": float(v) for k, v in metrics.items()
                            if isinstance(v, (int, float))}, step)
