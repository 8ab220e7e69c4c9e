"""Train and score the small classifiers the studies compare, on the shared engine loop.

Shapes: (N, 3, S, S) normalized images -> logits (N, K).

`train_classifier` trains through the runner every task uses (engine.runner.run_training),
with an SGD + multi-step recipe, and records the training error (mean over the batches of each
evaluation period, in training mode, on the augmented batches, as the curves of He et al.
2016) and the validation error at every evaluation.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from resnet_detect import CONFIGS
from resnet_detect.engine import all_reduce_sum, to_plain
from resnet_detect.engine.config import ConfigError, load_defaults
from resnet_detect.engine.runner import run_training
from resnet_detect.engine.task_api import TaskData
from resnet_detect.backbones.weights import read_checkpoint
from resnet_detect.engine.trainer import eval_mode

from ..data import stack
from .data import ClassificationSplit, SplitDataset

TRAIN_DEFAULTS = CONFIGS / "base_train.yaml"


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
    device = next(model.parameters()).device
    with eval_mode(model):
        logits = [model(images[i:i + batch_size].to(device)).float().cpu()
                  for i in range(0, len(images), batch_size)]
    return torch.cat(logits)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of normalized images (N, 3, S, S) with labels (N,)."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set")
    pred = predict(model, images, batch_size=batch_size).argmax(dim=1)
    return 100.0 * (pred == labels).float().mean().item()


class StudyTask:
    """One study classifier for `engine.runner.run_training`: a model built by the caller,
    in-memory splits, and the error curves of `TrainHistory`."""

    name = "analyze"
    primary_metrics = "errors"
    resume_hint = "the same command continues from it"  # (tools/analyze.py has no --resume)
    schedule_section = "solver"
    state_records_evaluations = True  # (its curves)

    def __init__(self, model: nn.Module, train: ClassificationSplit, val: ClassificationSplit, *,
                 recipe: Recipe, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 label: str, eval_batch_size: int,
                 provenance: dict[str, Any] | None = None) -> None:
        self.model = model
        self._provenance = provenance
        self.label = label
        self.eval_batch_size = eval_batch_size
        self.datasets = [SplitDataset(split, pixel_mean=pixel_mean, pixel_std=pixel_std,
                                      augment=recipe.augment and split is train)
                         for split in (train, val)]
        self.history = TrainHistory()
        self.steps = 0
        self.batch_errors: list[float] = []

    def prepare(self, cfg: DictConfig) -> TaskData:
        train, val = self.datasets
        return TaskData(train=train, val=val, val_batch_size=self.eval_batch_size,
                        description=f"{self.label}: {len(train)} train / {len(val)} val images")

    def build_model(self, cfg: DictConfig) -> nn.Module:
        return self.model

    def checkpoint_state(self) -> dict[str, Any]:
        """The curves so far and the training errors since the last evaluation: a resumed
        run's curves are those of a run never stopped."""
        return {"history": self.history.as_dict(), "batch_errors": list(self.batch_errors)}

    def resumed(self, iteration: int, state: dict[str, Any] | None) -> None:
        self.steps = iteration
        if state is not None:
            self.history = TrainHistory(**state["history"])
            self.batch_errors = list(state["batch_errors"])

    def provenance(self, cfg: DictConfig) -> dict[str, Any] | None:
        """What the run's checkpoints record (an interrupted run's are --weights too): the
        study's config as `study_config`, and the runner's config of the recipe, what a resume
        compares, as `config`."""
        if self._provenance is None:
            return None
        return {**self._provenance, "config": to_plain(cfg),
                "study_config": self._provenance.get("config")}

    def losses(self, model: nn.Module, batch: list[dict[str, Any]],
               device: torch.device) -> Mapping[str, torch.Tensor]:
        images, labels = (t.to(device) for t in stack(batch))
        logits = model(images)
        self.steps += 1
        self.batch_errors.append(100.0 * (logits.argmax(1) != labels).float().mean().item())
        return {"loss_cls": F.cross_entropy(logits, labels)}

    def evaluate(self, model: nn.Module, loader: Any,
                 device: torch.device) -> dict[str, dict[str, Any]]:
        sums = {"wrong": 0.0, "count": 0.0}
        for batch in loader:
            images, labels = (t.to(device) for t in stack(batch))
            sums["wrong"] += (model(images).argmax(1) != labels).sum().item()
            sums["count"] += len(labels)
        total = all_reduce_sum(sums)
        errors = {"train_error": sum(self.batch_errors) / max(len(self.batch_errors), 1),
                  "val_error": 100.0 * total["wrong"] / max(total["count"], 1.0)}
        self.batch_errors.clear()
        self.history.iterations.append(self.steps)
        self.history.train_error.append(errors["train_error"])
        self.history.val_error.append(errors["val_error"])
        return {"errors": errors}

    def save_final(self, cfg: DictConfig, model: nn.Module, iteration: int) -> list[Path]:
        return []  # the study saves the model with its own provenance

    def summary(self, metrics: dict[str, dict[str, Any]]) -> str:
        errors = metrics.get("errors", {})
        return ", ".join(f"{k} {v:.2f}%" for k, v in errors.items())


def recipe_config(recipe: Recipe, output_dir: str | os.PathLike, device: torch.device
                  ) -> DictConfig:
    """The runner's config of `recipe`: the shared `train` section (SGD, step decay with the
    fractions turned into iterations, warmup from base_lr / 10) and in-process loading."""
    steps = sorted({max(1, min(round(f * recipe.iterations), recipe.iterations))
                    for f in recipe.lr_steps})
    train = {"output_dir": str(output_dir), "device": device.type,
             "batch_size": recipe.batch_size, "max_iter": recipe.iterations,
             "optimizer": "sgd", "base_lr": recipe.base_lr, "momentum": recipe.momentum,
             "weight_decay": recipe.weight_decay, "lr_decay": "step", "lr_steps": steps,
             "gamma": recipe.gamma, "warmup_iters": recipe.warmup_iters, "warmup_factor": 0.1,
             # a checkpoint with each evaluation: a kill loses one period, not the net
             "checkpoint_period": recipe.eval_period, "eval_period": recipe.eval_period,
             "log_period": recipe.log_period, "seed": recipe.seed}
    return OmegaConf.merge(load_defaults(TRAIN_DEFAULTS),
                           {"task": "analyze", "train": train, "data": {"num_workers": 0}})


def _stopped_run_in(folder: Path) -> bool:
    """Whether `folder` (the run folder of one recipe: its name) holds a stopped run to
    continue: its last checkpoint records the study's state, without the final evaluation
    (a stop in that evaluation runs it again). A finished run (its net deleted to be trained
    again), or one stopped before the checkpoints recorded the study's state, trains anew."""
    pointer = folder / "last_checkpoint"
    if not pointer.is_file():
        return False
    try:
        path = folder / pointer.read_text(encoding="utf-8").strip()
        checkpoint = read_checkpoint(path)
        checkpoint["extra"]["task"]["history"]["iterations"]  # noqa: B018 (recorded)
        # the final checkpoint precedes the final evaluation: a run is finished where the
        # metrics.json that evaluation writes is newer (a stop in it leaves none, or an
        # earlier run's)
        metrics = folder / "metrics.json"
        finished = metrics.is_file() and metrics.stat().st_mtime >= path.stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError):
        return False  # (the runner names what is wrong with a damaged one as it starts anew)
    return not finished and "study_config" in (checkpoint.get("provenance") or {})


def train_classifier(model: nn.Module, train: ClassificationSplit, val: ClassificationSplit, *,
                     recipe: Recipe, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                     device: torch.device, output_dir: str | os.PathLike, name: str = "model",
                     eval_batch_size: int = 256,
                     provenance: dict[str, Any] | None = None) -> tuple[TrainHistory, str]:
    """Train `model` in place on `train`, evaluating on `val` every `recipe.eval_period` steps.

    Args:
        model: a classifier taking normalized images.
        train: training split (uint8 images in memory).
        val: validation split.
        recipe: the optimization recipe.
        pixel_mean, pixel_std: normalization on 0..255 values.
        device: where to train.
        output_dir: the run's folder (config, log, tensorboard, last checkpoint).
        name: shown in the progress lines.
        eval_batch_size: images per evaluation forward pass.
        provenance: recorded in the run's checkpoints (architecture, options, normalization).

    Returns:
        The error curves, and the name of a stop signal that came as the training ended
        (it finished: the caller saves the net and stops) or "".
    """
    if not 0 < recipe.batch_size <= len(train):
        raise ConfigError(f"solver.batch_size {recipe.batch_size} must be in 1..{len(train)} "
                          f"(the training images of {train.source})")
    task = StudyTask(model, train, val, recipe=recipe, pixel_mean=pixel_mean,
                     pixel_std=pixel_std, label=name, eval_batch_size=eval_batch_size,
                     provenance=provenance)
    result = run_training(task, recipe_config(recipe, output_dir, device), device,
                          resume=_stopped_run_in(Path(output_dir)))
    model.eval()
    return task.history, result["late_stop"]
