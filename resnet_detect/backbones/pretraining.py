"""The classification pretraining task the runner drives (engine.runner): a ResNet classifier
on an ImageFolder tree (root/train/<class>/*, root/val/<class>/*).

Ends with OUTPUT_DIR/model_final.pth (the classifier) and OUTPUT_DIR/backbone_final.pth (the
backbone alone, loadable with `backbones.build(name, weights=PATH)`), both with provenance.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig
from torch import nn
from torch.utils.data import DataLoader

from resnet_detect import CONFIGS
from resnet_detect.engine import (AMP_DTYPES, all_reduce_sum, amp_for_device, parse_amp,
                                  per_process_batch_size, to_plain)
from resnet_detect.engine.config import (ConfigError, config_section, is_number,
                                         is_positive_int)
from resnet_detect.engine.logging import warn_once
from resnet_detect.engine.data import DatasetError
from resnet_detect.engine.model_check import check_model_config
from resnet_detect.engine.task_api import TaskData

from . import build_classifier
from .browse import browse_split
from .classifier import Classifier
from .classifier_eval import evaluate_checkpoint
from .export import export_model
from .data import (ImageBatch, ImageFolderDataset, build_train_transform, build_val_transform,
                   check_val_interpolation, collate_images, normalize_images, scan_image_folder)
from .weights import (load_weights, make_provenance, read_checkpoint,
                      refuse_mismatched_settings, refuse_other_normalisation, save_checkpoint,
                      unwrap_state_dict)

logger = logging.getLogger(__name__)
BASE_CONFIG = CONFIGS / "pretrain" / "base_classifier.yaml"
OPEN_KEYS = ("model.options",)
# the `solver` section of older pretraining configs
RENAMED_KEYS = {
    "solver.optimizer": "train.optimizer", "solver.batch_size": "train.batch_size",
    "solver.epochs": "train.epochs", "solver.base_lr": "train.base_lr",
    "solver.momentum": "train.momentum", "solver.nesterov": "train.nesterov",
    "solver.weight_decay": "train.weight_decay", "solver.decay": "train.lr_decay",
    "solver.steps": "train.lr_step_epochs", "solver.gamma": "train.gamma",
    "solver.final_lr_factor": "train.final_lr_factor",
    "solver.warmup_epochs": "train.warmup_epochs", "solver.warmup_factor": "train.warmup_factor",
    "solver.clip_grad_norm": "train.clip_grad_norm",
    "solver.label_smoothing": "model.label_smoothing",
}


def build_datasets(cfg: DictConfig) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """Scan both splits first, so a missing folder fails before any model is built.

    Samples are uint8: `ClassificationTask` normalizes whole batches on the training device.
    """
    d = cfg.data
    check_data_settings(cfg)  # before the folders are scanned
    train_samples, class_names = scan_image_folder(f"{d.root}/{d.train_split}")
    if len(class_names) < 2:  # one logit's cross-entropy is 0: nothing would be learnt
        raise DatasetError(f"{d.root}/{d.train_split} has {len(class_names)} class folder "
                           f"({', '.join(class_names)}): a classifier needs at least 2 (the "
                           f"loss of one class is 0, the backbone would stay random)")
    val_samples, _ = scan_image_folder(f"{d.root}/{d.val_split}", class_names)
    train = ImageFolderDataset(samples=train_samples, class_names=class_names,
                               transform=build_train_transform(image_size=d.image_size,
                                                               scale=list(d.scale),
                                                               hflip=d.hflip, normalize=False))
    val = ImageFolderDataset(samples=val_samples, class_names=class_names,
                             transform=build_val_transform(image_size=d.image_size,
                                                           resize=d.val_resize, normalize=False,
                                                           interpolation=d.val_interpolation))
    return train, val


def refuse_output_in_a_split(cfg: DictConfig, output_dir: Path) -> None:
    """train.output_dir inside root/train or root/val: its checkpoints, logs and tensorboard
    folder would be written among the class folders (the next run then refused the split)."""
    d, out = cfg.data, output_dir.resolve()
    for split in (d.train_split, d.val_split):
        if out.is_relative_to(Path(d.root, split).resolve()):
            raise ConfigError(f"train.output_dir {cfg.train.output_dir} is inside the "
                              f"dataset's {split} folder {Path(d.root, split)}: the run's "
                              f"files would be read as a class there; give a folder outside "
                              f"it")


def check_data_settings(cfg: DictConfig) -> None:
    """The crop, augmentation and normalisation keys, named by their keys (albumentations'
    own checks raised tracebacks after the scan; a std of 0 gave a NaN loss at step 0)."""
    d = cfg.data
    for key in ("root", "train_split", "val_split"):  # (null passes the mandatory ??? check)
        if not isinstance(d.get(key), str) or not d[key]:
            raise ConfigError(f"data.{key} must be a folder name, got {d.get(key)!r}"
                              + (" (the dataset's root: root/train/<class>/*.jpg)"
                                 if key == "root" else ""))
    check_val_interpolation(d.val_interpolation)
    for key in ("image_size", "val_resize"):
        if not is_positive_int(d[key]):
            raise ConfigError(f"data.{key} must be a positive integer (pixels), got {d[key]!r}")
    if d.val_resize < d.image_size:
        raise ConfigError(f"data.val_resize ({d.val_resize}, the shorter side the val images are "
                          f"resized to) must be >= data.image_size ({d.image_size}, the centre "
                          f"crop taken from it)")
    if d.val_resize > 2 * d.image_size:  # (data.image_size=32 under the default 256)
        warn_once(logger, f"data.val_resize {d.val_resize} for crops of data.image_size "
                          f"{d.image_size}: the evaluation scores the centre "
                          f"{100 * d.image_size / d.val_resize:.0f}% of each image's shorter "
                          f"side (torchvision and timm resize to about the crop / 0.875: "
                          f"data.val_resize={round(d.image_size / 0.875)})")
    scale = list(d.scale) if isinstance(d.scale, (list, tuple, ListConfig)) else None
    if (scale is None or len(scale) != 2 or not all(is_number(v) for v in scale)
            or not 0 < scale[0] <= scale[1] <= 1):
        raise ConfigError(f"data.scale must be two numbers 0 < min <= max <= 1 (the random "
                          f"crop's share of the image's area), got {d.scale!r}")
    if not isinstance(d.hflip, bool):
        raise ConfigError(f"data.hflip must be true or false, got {d.hflip!r}")
    for key, least in (("pixel_mean", -math.inf), ("pixel_std", 0)):
        values = d[key]
        if (not isinstance(values, (list, tuple, ListConfig)) or len(values) != 3
                or not all(is_number(v) and least < v < math.inf for v in values)):
            raise ConfigError(f"data.{key} must be 3 numbers (RGB, 0..255 scale"
                              f"{'; each > 0' if key == 'pixel_std' else ''}), got {values!r}")
    smoothing = cfg.model.label_smoothing
    if isinstance(smoothing, bool) or not (is_number(smoothing) and 0 <= smoothing < 1):
        raise ConfigError(f"model.label_smoothing must be in [0, 1) (the share of the target "
                          f"spread over the other classes), got {smoothing!r}")


class ClassificationTask:
    """Classifier pretraining for `engine.runner.run_training`; metrics in percent."""

    name = "classification"
    primary_metrics = "classification"

    @staticmethod
    def metric_names(cfg: DictConfig) -> list[str]:
        """What train.best_metric may name."""
        return ["classification/top1", "classification/top5"]

    @staticmethod
    def check_resumed_model(source: str, recorded: Mapping[str, Any],
                            configured: Mapping[str, Any], model: nn.Module) -> None:
        """A resumed run must normalise its images as its checkpoint's weights learnt them
        (data.pixel_mean, data.pixel_std)."""
        names = [k for k in ("pixel_mean", "pixel_std") if k in recorded.get("data", {})]
        refuse_mismatched_settings(source, {f"data.{k}": recorded["data"][k] for k in names},
                                   {f"data.{k}": configured["data"][k] for k in names}, model)

    def __init__(self) -> None:
        self.class_names: list[str] = []
        self.channels_last = False
        self.label_smoothing = 0.0
        self.amp: str | None = None
        self.pixel_mean = torch.zeros(3)  # float32, moved to the training device once
        self.pixel_std = torch.ones(3)

    def check_output_dir(self, cfg: DictConfig, output_dir: Path) -> None:
        """Before the run writes anything there (its lock and log)."""
        check_data_settings(cfg)
        refuse_output_in_a_split(cfg, output_dir)

    def check_config(self, cfg: DictConfig) -> None:
        check_model_config(lambda probe: self._build(probe, num_classes=2), cfg,
                           read_weights=read_checkpoint, loaded_early="model.weights")

    def prepare(self, cfg: DictConfig) -> TaskData:
        self.check_config(cfg)
        train, val = build_datasets(cfg)
        self.configure(cfg, train.class_names, cfg.data.pixel_mean, cfg.data.pixel_std)
        per_process = per_process_batch_size(cfg.train.batch_size, "train.batch_size")
        description = (f"{len(train)} train / {len(val)} val images, "
                       f"{len(self.class_names)} classes")
        return TaskData(train=train, val=val, description=description,
                        val_batch_size=per_process, collate=collate_images)

    def configure(self, cfg: DictConfig, class_names: list[str], pixel_mean: Sequence[float],
                  pixel_std: Sequence[float]) -> None:
        """The classes, the input layout and normalisation, the loss and AMP settings the
        steps and evaluations use (a training's, or tools/eval.py's of given weights)."""
        self.class_names = class_names
        self.channels_last = bool(cfg.model.channels_last)
        self.label_smoothing = float(cfg.model.label_smoothing)
        self.amp = parse_amp(cfg.train.amp)
        self.pixel_mean = torch.tensor(list(pixel_mean), dtype=torch.float32)
        self.pixel_std = torch.tensor(list(pixel_std), dtype=torch.float32)

    def build_model(self, cfg: DictConfig) -> nn.Module:
        return self._build(cfg, len(self.class_names))

    def _build(self, cfg: DictConfig, num_classes: int) -> nn.Module:
        with config_section("model"):
            model = build_classifier(cfg.model.name, num_classes,
                                     config_prefix="model.options.", **to_plain(cfg.model.options))
        if cfg.model.weights:  # fine-tuning: the backbone's weights and a new fc, except
            # from this project's classifier of these classes (a FixRes-style fine-tuning at
            # another size): its fc too, as timm's --initial-checkpoint keeps a fitting head
            source = str(cfg.model.weights)
            checkpoint = read_checkpoint(source)
            state_dict, provenance = unwrap_state_dict(checkpoint)
            same_classes = (bool(self.class_names) and "fc.weight" in state_dict
                            and (provenance or {}).get("class_names") == self.class_names)
            loaded = model if same_classes else model.backbone
            load_weights(loaded, checkpoint, source=source, config_prefix="model.options.")
            refuse_other_normalisation(loaded, source, cfg.data, prefix="data.")
            if same_classes:
                logger.info("%s: the fc too (trained on these classes)", source)
            else:
                why = ("the weights have no fc" if "fc.weight" not in state_dict else
                       "the weights name no classes" if not (provenance or {}).get(
                           "class_names") else "the weights were trained on other classes")
                logger.info("%s: the backbone; the fc is new (%s)", source, why)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _inputs(self, batch: ImageBatch, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pixel_mean.device != device:
            self.pixel_mean, self.pixel_std = self.pixel_mean.to(device), self.pixel_std.to(device)
        batch = batch.to(device, non_blocking=True)
        images = normalize_images(batch.images, self.pixel_mean, self.pixel_std)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, batch.labels

    def losses(self, model: nn.Module, batch: ImageBatch,
               device: torch.device) -> Mapping[str, torch.Tensor]:
        images, labels = self._inputs(batch, device)
        return {"loss_cls": F.cross_entropy(model(images), labels,
                                            label_smoothing=self.label_smoothing)}

    def evaluate(self, model: nn.Module, loader: DataLoader,
                 device: torch.device) -> dict[str, dict[str, Any]]:
        """Top-1/top-5 accuracy over every process's shard; unreadable images not scored."""
        # (said by the training, or tools/eval.py, before: not again at every evaluation)
        amp = amp_for_device(self.amp, device.type, warn=False)
        dtype = AMP_DTYPES[amp] if amp else None
        sums = {"top1": 0.0, "top5": 0.0, "count": 0.0}
        for batch in loader:
            if not batch:
                continue
            images, labels = self._inputs(batch, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(images)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (N, 5)
            hit = top == labels[:, None]
            sums["top1"] += hit[:, 0].sum().item()
            sums["top5"] += hit.any(dim=1).sum().item()
            sums["count"] += len(labels)
        total = all_reduce_sum(sums)
        n = total["count"] or math.nan  # no image read: no accuracy (n/a), not 0
        return {"classification": {"top1": 100.0 * total["top1"] / n,
                                   "top5": 100.0 * total["top5"] / n}}

    def summary(self, metrics: dict[str, dict[str, Any]]) -> str:
        m = metrics.get("classification", {})
        values = {k: m.get(k) for k in ("top1", "top5")}  # NaN: no image was read
        return "  ".join(f"{k}=n/a" if v is None or math.isnan(v) else f"{k}={v:.2f}"
                         for k, v in values.items())

    def provenance(self, cfg: DictConfig) -> dict[str, Any]:
        return make_provenance(
            cfg.model.name, to_plain(cfg.model.options), class_names=self.class_names,
            config=to_plain(cfg), pixel_mean=tuple(cfg.data.pixel_mean),
            pixel_std=tuple(cfg.data.pixel_std))

    def save_final(self, cfg: DictConfig, model: nn.Module, iteration: int) -> list[Path]:
        assert isinstance(model, Classifier)
        output_dir = Path(cfg.train.output_dir)
        provenance = self.provenance(cfg)
        save_checkpoint(output_dir / "model_final.pth", model.state_dict(), provenance,
                        iteration=iteration)
        save_checkpoint(output_dir / "backbone_final.pth", model.backbone.state_dict(),
                        provenance)
        return [output_dir / "model_final.pth", output_dir / "backbone_final.pth"]


TASK = ClassificationTask
__all__ = ["BASE_CONFIG", "OPEN_KEYS", "RENAMED_KEYS", "TASK", "browse_split",
           "evaluate_checkpoint", "export_model"]
