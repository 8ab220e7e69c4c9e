"""What a task gives the runner (engine.runner.run_training): its data (`TaskData`) and the
object (`Task`) that builds its model, computes its losses, evaluates and saves; and the few
names both sides use (metrics, the resume hint)."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from .data import collate


Metrics = dict[str, dict[str, Any]]  # {group ("bbox", "segm", "sem_seg", ...): {name: value}}


@dataclass
class TaskData:
    """What a task's data gives the runner.

    Attributes:
        train: indexed by (index, augmentation seed); an unreadable image gives None.
        val: the evaluation split (None: no evaluation).
        description: one log line (sizes, classes).
        group_ids: aspect-ratio group of every training index (None: no grouping).
        val_batch_size: images per evaluation batch on each process.
        collate: samples -> batch in the loader workers (default: a list of the readable ones).
        batch_keys: a training batch's keys -> the keys asked of `train` (None: as drawn).
        repeat_factors: times each training image is drawn per pass (None: once).
    """

    train: Dataset
    val: Dataset | None
    description: str
    group_ids: np.ndarray | None = None
    val_batch_size: int = 1
    collate: Callable[[list[Any]], Any] = collate
    batch_keys: Callable[[list[Any]], list[Any]] | None = None
    repeat_factors: np.ndarray | None = None


# what the runner calls on every task (the others are optional)
TASK_METHODS = ("prepare", "build_model", "losses", "evaluate", "save_final", "summary")


class Task(Protocol):
    """What a task supplies. One instance per run; it may keep what `prepare` found.

    The config `run_training` takes has every key of configs/base_train.yaml's `train`
    section and a `data` section with `num_workers` (`engine.tasks.load_task_config` loads
    a registered task's so, refusing a misspelt key; docs/extending.md); `TaskData.train` is
    indexed by (index, seed) pairs (the seed draws the sample's augmentation)."""

    name: str            # the config's `task` value, also its logger's last name
    primary_metrics: str  # the metric group tools print and `metrics` returns
    # optional `unreadable_val`: what an unreadable val image does to the metrics (LEFT_OUT)
    # optional `resume_hint`: how a stopped run continues (RESUME_HINT)
    # optional `schedule_section`: the config section its user sets base_lr and warmup in
    #   ("train")
    # optional `state_records_evaluations`: True where `evaluate` changes the task's own state
    #   (curves kept in its checkpoints): a resume runs the evaluation of its iteration again
    # optional `metric_names(cfg)`: the "group/key" names evaluations give, so that a
    #   train.best_metric of none is refused before training
    # optional `check_output_dir(cfg, folder)`, `check_resumed_model(source, recorded config,
    #   this config, model)`, `slow_data_hint(cfg)`: a task's own refusals and hint

    def check_config(self, cfg: DictConfig) -> None:
        """The task's checks that need no data: its keys' values, the model built on the meta
        device, the weights' files (`prepare`'s first; tools/train.py --print-config's).
        Optional."""

    def prepare(self, cfg: DictConfig) -> TaskData:
        """Load and check the data (errors name the file) and complete `cfg` (e.g.
        model.num_classes from the data), before any model is built."""

    def build_model(self, cfg: DictConfig) -> nn.Module:
        """The model, on the CPU, with the weights the config names."""

    def losses(self, model: nn.Module, batch: list[dict[str, Any]],
               device: torch.device) -> Mapping[str, torch.Tensor]:
        """{"loss_*": scalar} of a non-empty list of samples."""

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device) -> Metrics:
        """Metrics over this process's share of the val loader (collective)."""

    def checkpoint_state(self) -> Any:
        """What the task keeps across a stop (tensors, numbers, lists, dicts: saved in every
        checkpoint, given back to `resumed`). Optional."""

    def resumed(self, iteration: int, state: Any) -> None:
        """Told that the run continues from its checkpoint at `iteration`, with the
        `checkpoint_state` saved there (None: none was), before the first step. Optional."""

    def provenance(self, cfg: DictConfig) -> dict[str, Any]:
        """What the weights record (architecture, classes, normalisation, the config): in
        model_final.pth and in every training checkpoint, so each loads for eval and export.
        Optional: a task without it records its config alone; one returning None records
        nothing (a resume then compares no settings)."""

    def save_final(self, cfg: DictConfig, model: nn.Module, iteration: int) -> list[Path]:
        """Write model_final.pth (and any other final files) with provenance (main process)."""

    def summary(self, metrics: Metrics) -> str:
        """The line the training tool prints at the end (e.g. "box AP = 50.4")."""


# a task's resume_hint may differ
RESUME_HINT = ("run the same command with --resume to continue (from Python: run_training(..., "
               "resume=True))")


def format_metric(value: Any) -> str:
    """A percentage with one decimal, or n/a (None or NaN)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.1f}"


# what an unreadable val image does to the metrics (a task's optional unreadable_val)
LEFT_OUT = "the metrics are those of the others"
