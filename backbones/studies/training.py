"""Train and score the small classifiers the studies compare, on the shared engine loop.

Shapes: (N, 3, S, S) normalized images -> logits (N, K).

`train_classifier` runs `engine.Trainer` with an SGD + multi-step recipe and records the
training error (mean over the batches of each evaluation period, in training mode, on the
augmented batches, as the curves of He et al. 2016) and the validation error at every
evaluation.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine import PeriodicEval, ProgressLogger, Trainer, build_lr_scheduler

from .data import BatchStream, ClassificationSplit, normalize

logger = logging.getLogger(__name__)


@dataclass
class Recipe:
    """SGD with momentum, learning rate divided by `1 / gamma` at fractions of the run.

    Attributes:
        batch_size: images per step.
        iterations: optimizer steps.
        base_lr, momentum, weight_decay: SGD.
        lr_steps: fractions of `iterations` where the rate is multiplied by gamma.
        gamma: step factor.
        warmup_iters: linear warmup from base_lr / 10.
        eval_period: iterations between evaluations (also the training-error window).
        log_period: iterations between progress lines.
        augment: pad-and-crop + flip.
        seed: model init, batch order and augmentation.
    """

    batch_size: int = 128
    iterations: int = 64000
    base_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: Sequence[float] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_iters: int = 0
    eval_period: int = 1000
    log_period: int = 100
    augment: bool = True
    seed: int = 0


@dataclass
class TrainHistory:
    """Errors in percent at iterations `iterations` (one entry per evaluation)."""

    iterations: list[int] = field(default_factory=list)
    train_error: list[float] = field(default_factory=list)
    val_error: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[Any]]:
        return {"iterations": self.iterations, "train_error": self.train_error,
                "val_error": self.val_error}


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Logits (N, K) of normalized images (N, 3, S, S) in evaluation mode, in batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = [model(images[i:i + batch_size].to(device)).float().cpu()
              for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(logits)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of normalized images (N, 3, S, S) with labels (N,)."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set")
    pred = predict(model, images, batch_size=batch_size).argmax(dim=1)
    return 100.0 * (pred == labels).float().mean().item()


def train_classifier(model: nn.Module, train: ClassificationSplit, val: ClassificationSplit, *,
                     recipe: Recipe, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                     device: torch.device, name: str = "model",
                     eval_batch_size: int = 256) -> TrainHistory:
    """Train `model` in place on `train`, evaluating on `val` every `recipe.eval_period` steps.

    Args:
        model: a classifier taking normalized images.
        train: training split (uint8 images in memory).
        val: validation split.
        recipe: the optimization recipe.
        pixel_mean, pixel_std: normalization on 0..255 values.
        device: where to train.
        name: shown in the progress lines.
        eval_batch_size: images per evaluation forward pass.

    Returns:
        The error curves.
    """
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=recipe.base_lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    steps = sorted({max(1, min(round(f * recipe.iterations), recipe.iterations))
                    for f in recipe.lr_steps})
    scheduler = build_lr_scheduler(optimizer, max_iter=recipe.iterations, decay="step",
                                   steps=steps, gamma=recipe.gamma,
                                   warmup_iters=recipe.warmup_iters, warmup_factor=0.1)
    batch_errors: list[float] = []

    def step_fn(net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, labels = batch["images"].to(device), batch["labels"].to(device)
        logits = net(images)
        batch_errors.append(100.0 * (logits.argmax(1) != labels).float().mean().item())
        return {"loss_cls": F.cross_entropy(logits, labels)}

    val_images = normalize(val.images, pixel_mean, pixel_std)
    history = TrainHistory()

    def evaluate() -> dict[str, float]:
        train_error = sum(batch_errors) / max(len(batch_errors), 1)
        batch_errors.clear()
        val_error = 100.0 - accuracy(model, val_images, val.labels, batch_size=eval_batch_size)
        return {"train_error": train_error, "val_error": val_error}

    def record(metrics: dict[str, float], iteration: int) -> None:
        history.iterations.append(iteration)
        history.train_error.append(metrics["train_error"])
        history.val_error.append(metrics["val_error"])
        logger.info("%s iter %d: train error %.2f%%  val error %.2f%%", name, iteration,
                    metrics["train_error"], metrics["val_error"])

    trainer = Trainer(model=model, optimizer=optimizer, scheduler=scheduler, step_fn=step_fn,
                      max_iter=recipe.iterations,
                      hooks=[ProgressLogger(recipe.log_period, logger=logger),
                             PeriodicEval(recipe.eval_period, evaluate, on_result=record)])
    stream = BatchStream(train, batch_size=recipe.batch_size, pixel_mean=pixel_mean,
                         pixel_std=pixel_std, augment=recipe.augment, seed=recipe.seed)
    trainer.train(iter(stream))
    model.eval()
    return history
