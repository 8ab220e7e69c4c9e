"""The checks of a training config before anything is built (the shared train section's values
and choices, a task's metrics and normalisation), the optimizer it asks for, and the
warnings of settings that train otherwise than they seem to."""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig
from torch import nn

from .amp import parse_amp
from .checkpoint import BEST_MODES, best_metric_parts
from .compilation import parse_compile
from .config import (PERIODS, ConfigError, as_override, flat_keys, is_number,
                     is_positive_int, load_defaults, to_plain)
from .distributed import get_world_size, is_main_process, per_process_batch_size
from .ema import check_ema_decay
from .model_check import weights_keys
from .optim import (OPTIMIZERS, build_optimizer, check_learning_rate, refuse_unknown_modules,
                    unknown_modules)
from .schedule import DECAYS
from .run_length import check_schedule
from .task_api import Task
from .tasks import BUILT_IN_TASKS, TRAIN_DEFAULTS, task_defaults


def check_num_workers(cfg: DictConfig) -> None:
    """data.num_workers, named (a DataLoader's traceback after the data was read)."""
    workers = cfg.get("data", {}).get("num_workers", 0)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0 (0: load in the main "
                          f"process), got {workers!r}")


def check_train_choices(t: DictConfig) -> None:
    """The shared train section's choices and values (the optimizer and lr_decay, the
    best_metric mode, the seed, the batch, the run's length and periods, the rates, the
    EMA...), each refused naming its key (run_training checks them before the data is read,
    the model built or config.yaml written)."""
    for key, value, valid in (("optimizer", t.optimizer, OPTIMIZERS),
                              ("lr_decay", t.lr_decay, DECAYS),
                              ("best_metric_mode", t.best_metric_mode, BEST_MODES)):
        if value not in valid:
            yaml_bool = (" (YAML reads on, off, yes and no as true and false)"
                         if isinstance(value, bool) else "")
            raise ConfigError(f"unknown train.{key} {value!r}{yaml_bool}; valid: "
                              f"{', '.join(valid)}")
    if t.best_metric is not None:
        best_metric_parts(t.best_metric)
    check_ema_decay(t.ema_decay)
    if not isinstance(t.seed, int) or isinstance(t.seed, bool) or not 0 <= t.seed < 2**31:
        raise ConfigError(f"train.seed must be an integer in 0..{2**31 - 1}, got {t.seed!r} (a "
                          "run is repeated with the same seed; no value draws one at random)")
    if not is_positive_int(t.batch_size):
        raise ConfigError(f"train.batch_size must be a positive integer (images per step over "
                          f"all processes), got {t.batch_size!r}")
    if not is_positive_int(t.accumulation_steps):
        raise ConfigError(f"train.accumulation_steps must be a positive integer (batches per "
                          f"optimizer step), got {t.accumulation_steps!r}")
    # null is valid for these (the other key gives the run's length)
    if t.max_iter is not None and not is_positive_int(t.max_iter):
        raise ConfigError(f"train.max_iter must be a positive integer (iterations), or null with "
                          f"train.epochs, got {t.max_iter!r}")
    if t.epochs is not None and not (is_number(t.epochs) and t.epochs > 0):
        raise ConfigError(f"train.epochs must be a positive number (passes over the training "
                          f"images), or null with train.max_iter, got {t.epochs!r}")
    for period in PERIODS:
        epochs, iterations = t[f"{period}_epochs"], t[period]
        if epochs is not None and not (is_number(epochs) and epochs > 0):
            raise ConfigError(f"train.{period}_epochs must be a positive number of epochs, or "
                              f"null for train.{period} in iterations, got {epochs!r}")
        # (a config's period in iterations under a base file's in epochs was not used)
        if epochs is not None and iterations not in (0, _train_defaults()[period]):
            raise ConfigError(f"train.{period} ({iterations} iterations) and train.{period}"
                              f"_epochs ({epochs}) are both set; give one as an override (it "
                              f"unsets the other): train.{period}={iterations} or train."
                              f"{period}_epochs={epochs}")
    lr_multipliers(t)
    if t.clip_grad_norm is not None and not (is_number(t.clip_grad_norm)
                                             and t.clip_grad_norm >= 0):
        # torch's clip_grad_norm_ takes a negative norm and turns every gradient around
        raise ConfigError(f"train.clip_grad_norm must be > 0, or 0 or null for no clipping, got "
                          f"{t.clip_grad_norm!r}")
    if not (is_number(t.final_lr_factor) and 0 <= t.final_lr_factor <= 1):
        # below 0 the lr turns negative (SGD climbs the loss), above 1 it rises
        raise ConfigError(f"train.final_lr_factor must be in 0..1 (the lr at the end of a cosine "
                          f"or poly decay, as a fraction of train.base_lr), got "
                          f"{t.final_lr_factor!r}")
    if not (is_number(t.lr_power) and 0 < t.lr_power < math.inf):  # (inf: an lr of 0 at once)
        raise ConfigError(f"train.lr_power must be a number > 0 (the exponent of the poly "
                          f"decay; 0.9 in DeepLab's and torchvision's recipes), got "
                          f"{t.lr_power!r}")
    if not (is_number(t.warmup_factor) and 0 <= t.warmup_factor <= 1):
        raise ConfigError(f"train.warmup_factor must be in 0..1 (the lr at the warmup's start, "
                          f"as a fraction of train.base_lr), got {t.warmup_factor!r}")
    if t.max_to_keep is not None and not is_positive_int(t.max_to_keep):
        raise ConfigError(f"train.max_to_keep must be a positive integer (at least 2 are kept) "
                          f"or null to keep every checkpoint, got {t.max_to_keep!r}")
    check_solver_values(t, "train.", step_decay=t.lr_decay == "step", sgd=t.optimizer == "sgd")
    if t.nesterov and t.optimizer == "sgd" and t.momentum == 0:
        raise ConfigError("train.nesterov needs train.momentum > 0")
    for key, least in (("log_period", 1), ("checkpoint_period", 0), ("eval_period", 0)):
        if t[key] < least:
            raise ConfigError(f"train.{key} must be >= {least}, got {t[key]}"
                              f"{' (0 = only at the end)' if least == 0 else ''}")


@functools.cache
def _train_defaults() -> DictConfig:
    return load_defaults(TRAIN_DEFAULTS).train


def check_solver_values(section: Mapping[str, Any], prefix: str, *, step_decay: bool = True,
                        sgd: bool = True) -> None:
    """gamma (of a step decay), weight_decay and momentum (of SGD), named as `prefix` + key
    (train., or solver. for the studies): torch checks them only as its optimizers' defaults,
    not per parameter group, so a negative decay or a gamma below 0 trained on, climbing the
    loss."""
    gamma, decay, momentum = section["gamma"], section["weight_decay"], section["momentum"]
    if step_decay and not (is_number(gamma) and 0 < gamma <= 1):
        raise ConfigError(f"{prefix}gamma must be in (0, 1] (the factor of the lr at each of "
                          f"{prefix}lr_steps), got {gamma!r}")
    if not (is_number(decay) and 0 <= decay < math.inf):
        raise ConfigError(f"{prefix}weight_decay must be a number >= 0, got {decay!r}")
    if sgd and not (is_number(momentum) and 0 <= momentum < 1):
        raise ConfigError(f"{prefix}momentum must be in [0, 1) (SGD's), got {momentum!r}")


def lr_multipliers(t: DictConfig) -> dict[str, float]:
    """train.lr_multipliers as {module name: factor}; `{backbone: {bottom_up: 0.1}}` (what an
    override `train.lr_multipliers.backbone.bottom_up=0.1` makes) is `backbone.bottom_up`."""
    given = t.get("lr_multipliers")
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"train.lr_multipliers must map module names to factors (e.g. "
                          f"{{backbone: 0.1}}), got {given!r}")
    factors = flat_keys(to_plain(given) if isinstance(given, DictConfig) else given)
    for name, factor in factors.items():
        if not (is_number(factor) and 0 < factor < math.inf):
            raise ConfigError(f"train.lr_multipliers.{name} must be a number > 0 (its "
                              f"parameters' factor of the learning rate; frozen layers: the "
                              f"model's freeze options), got {factor!r}")
    return factors


def build_optimizer_from_config(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """`train.optimizer` (SGD or AdamW) over the trainable parameters, with the learning-rate
    factors of `train.lr_multipliers`."""
    t = cfg.train
    check_train_choices(t)
    factors = lr_multipliers(t)
    refuse_unknown_modules(model, factors)
    frozen = unknown_modules(model, factors, trainable=True)
    if frozen and is_main_process():  # (valid names: a freeze_at may change between runs)
        logging.getLogger(__name__).warning(
            "train.lr_multipliers names %s, whose parameters are all frozen (the model's "
            "freeze options): its factor changes nothing", ", ".join(frozen))
    return build_optimizer(model, name=t.optimizer, lr=t.base_lr, weight_decay=t.weight_decay,
                           momentum=t.momentum, nesterov=t.nesterov, lr_multipliers=factors)


def drawn_batch_size(t: DictConfig) -> int:
    """The batches this process draws: its share of train.batch_size over
    train.accumulation_steps.

    Raises:
        ConfigError: a batch the processes, or the accumulation steps, cannot share.
    """
    per_process = per_process_batch_size(t.batch_size, "train.batch_size")
    if per_process % t.accumulation_steps:
        raise ConfigError(f"train.accumulation_steps {t.accumulation_steps} does not divide "
                          f"the {per_process} images per step of each of the "
                          f"{get_world_size()} processes (train.batch_size {t.batch_size})")
    return per_process // t.accumulation_steps


def warn_of_a_rate_far_above_the_recipes(task_name: str, t: DictConfig,
                                         logger: logging.Logger) -> None:
    """train.base_lr kept from a recipe while train.batch_size shrank (0.02 for 16 images, at
    2): the loss turned NaN some steps in; the linear scaling rule (Goyal et al., which the
    recipes and the README follow) names the rate to use."""
    if task_name not in BUILT_IN_TASKS:  # (another's defaults are base_train.yaml's)
        return
    recipe = task_defaults(task_name).train
    per_image, recipes = t.base_lr / t.batch_size, recipe.base_lr / recipe.batch_size
    if (t.batch_size < recipe.batch_size and per_image >= 4 * recipes
            and t.optimizer == recipe.optimizer):  # (AdamW's rates are not SGD's)
        logger.warning("train.base_lr %g at train.batch_size %d is %.0fx the recipes' rate per "
                       "image (%g for %d images); the linear scaling rule gives %.3g here: a "
                       "loss that turns NaN in the first steps is the usual sign of a rate too "
                       "high", t.base_lr, t.batch_size, per_image / recipes, recipe.base_lr,
                       recipe.batch_size, recipes * t.batch_size)


def cudnn_benchmark_warning(cfg: DictConfig, device: torch.device) -> str | None:
    """train.cudnn_benchmark with a mask head on a GPU: cuDNN times its algorithms for every
    new input shape, and the mask head's convolutions get a new RoI count at every step."""
    if not (cfg.train.cudnn_benchmark and device.type == "cuda"
            and (cfg.get("model") or {}).get("mask_on")):
        return None
    return ("train.cudnn_benchmark=true with model.mask_on: the mask head's convolutions see a "
            "new RoI count at every step and cuDNN times its algorithms again for each, so "
            "training runs several times slower (BENCHMARKS.md, GPU run 5); set "
            "train.cudnn_benchmark=false")


def _refuse_unit_scale_normalisation(cfg: DictConfig) -> None:
    """A training from scratch whose pixel_mean / pixel_std are on a 0..1 scale
    (torchvision's `Normalize` values; the images here are 0..255): refused, as such values
    feed the network inputs of about +-1000. (Weights carry their own values, checked where
    they load; weights trained so keep working.)"""
    if any(weights_keys(cfg.get("model")).values()):
        return
    for section in ("data", "model"):
        values = [(cfg.get(section) or {}).get(key) for key in ("pixel_mean", "pixel_std")]
        if not all(isinstance(v, (list, tuple, ListConfig)) and len(v) == 3
                   and all(is_number(x) for x in v) for v in values):
            continue  # (checked where they are read)
        mean, std = values
        if max(std) < 1 and max(mean) <= 1:
            raise ConfigError(
                f"{section}.pixel_mean {as_override(mean)} and {section}.pixel_std "
                f"{as_override(std)} are on a 0..1 scale (torchvision's Normalize); images "
                f"here are 0..255: ImageNet's are {section}.pixel_mean=[123.675,116.28,103.53] "
                f"{section}.pixel_std=[58.395,57.12,57.375]")


def check_training_config(task: Task, cfg: DictConfig) -> tuple[str | None, str | None]:
    """The train settings' checks that need no data, model or folder (run_training's first,
    and tools/train.py --print-config's); returns (compile backend, amp)."""
    t = cfg.train
    check_learning_rate(t.base_lr, "train.base_lr")
    compile_backend = parse_compile(t.compile)
    amp = parse_amp(t.amp)
    check_train_choices(t)
    names = task.metric_names(cfg) if hasattr(task, "metric_names") else None
    if t.best_metric is not None and names is not None and t.best_metric not in names:
        # found at the first evaluation otherwise, hours in, with no model_best.pth kept
        voc = (" (voc/mAP comes with data.val.voc_metric=11point or area)"
               if str(t.best_metric).startswith("voc/") else "")
        lvis = (" (APr, APc, APf: an LVIS val file's only)"
                if any(n.endswith("/APr") for n in names) else "")
        a_acc = (" (mmsegmentation's aAcc is pixel_acc here)"
                 if str(t.best_metric).endswith("/aAcc") else "")
        raise ConfigError(f"train.best_metric {t.best_metric!r} is not a metric of this task's "
                          f"evaluations{voc}; valid: {', '.join(names)}{lvis}{a_acc}")
    check_schedule(cfg)
    _refuse_unit_scale_normalisation(cfg)
    drawn_batch_size(t)  # before the folder's log files
    check_num_workers(cfg)
    if not isinstance(t.output_dir, str) or not t.output_dir.strip():
        # (Path("") is the current folder: the run's files were written among its files)
        raise ConfigError(f"train.output_dir must name a folder, got {t.output_dir!r}")
    return compile_backend, amp
