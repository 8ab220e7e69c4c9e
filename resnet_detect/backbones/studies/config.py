"""The analyze config: every valid key with its default, and the objects built from it.

The defaults are the CIFAR-10 recipe of He et al. 2016 (section 4.2: batch 128, lr 0.1
divided by 10 at 32k and 48k of 64k iterations, weight decay 1e-4, momentum 0.9, pad-4 crop
and flip); configs/analyze/cifar_synthetic.yaml shortens it to minutes on a CPU.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from resnet_detect.engine.config import ConfigError, is_number, is_positive_int
from resnet_detect import CONFIGS
from resnet_detect.engine import init_distributed, to_plain
from resnet_detect.engine.optim import check_learning_rate
from resnet_detect.engine.train_settings import check_solver_values

from .. import build_classifier
from ..registry import list_models
from .data import ClassificationSplit, load_splits
from .lesion import warn_of_max_k_past_the_blocks
from .path_sampling import apply_path_sampling
from .responses import LAYERS
from .training import Recipe

logger = logging.getLogger(__name__)

BASE_CONFIG = CONFIGS / "analyze" / "base_study.yaml"
OPEN_KEYS = ("model.options",)


@dataclass
class StudyContext:
    """What every study needs, built once from the config.

    Attributes:
        train, val: the data splits in memory.
        data_name: short name of the data for titles.
        family: registry name prefix; `arch(depth, residual)` gives full names.
        depth: the depth of responses, lesion and paths.
        options: backbone options.
        path_sampling: keyword arguments of `apply_path_sampling` for residual nets trained here.
        recipe: the training recipe.
        pixel_mean, pixel_std: normalization of models trained here.
        device: where models run.
        eval_batch_size: images per evaluation forward pass.
        output_dir: where results (and models trained here) go.
        config: the resolved config as plain values (stored in checkpoints).
    """

    train: ClassificationSplit
    val: ClassificationSplit
    data_name: str
    family: str
    depth: int
    options: dict[str, Any]
    path_sampling: dict[str, Any]
    recipe: Recipe
    pixel_mean: list[float]
    pixel_std: list[float]
    device: torch.device
    eval_batch_size: int
    output_dir: Path
    config: dict[str, Any]

    def arch(self, depth: int, residual: bool) -> str:
        """Registry name of the residual net or its plain twin at `depth`."""
        return arch_name(self.family, depth, residual)

    def describe_data(self) -> str:
        size = self.train.images.shape[-1]
        train = f"{len(self.train)} train / " if len(self.train) else ""
        return (f"{self.data_name} ({len(self.train.class_names)} classes, {size}x{size} px, "
                f"{train}{len(self.val)} val images)")


def arch_name(family: str, depth: int, residual: bool) -> str:
    """`{family}{depth}` or `plain_{family}{depth}`, checked against the registry."""
    name = f"{family}{depth}" if residual else f"plain_{family}{depth}"
    if name not in list_models():
        raise ConfigError(f"model.family={family!r} with depth {depth} gives unknown backbone "
                          f"{name!r}; valid: {', '.join(list_models())}")
    return name


def recipe_from_config(cfg: DictConfig, study: str | None = None) -> Recipe:
    """The solver section, with `<study>.iterations` (when > 0) as the training length;
    `train.evaluations` evaluations are spread evenly over the run."""
    s, t = cfg.solver, cfg.train
    iterations = s.iterations
    if study is not None and cfg[study].iterations > 0:
        iterations = cfg[study].iterations
    if iterations < 1 or t.evaluations < 1:
        raise ConfigError(f"solver.iterations ({iterations}) and train.evaluations "
                          f"({t.evaluations}) must be >= 1")
    check_learning_rate(s.base_lr, "solver.base_lr")  # (the runner would name train.base_lr)
    _check_solver(s)
    return Recipe(batch_size=s.batch_size, iterations=iterations, base_lr=s.base_lr,
                  momentum=s.momentum, weight_decay=s.weight_decay,
                  lr_steps=tuple(s.lr_steps), gamma=s.gamma, warmup_iters=s.warmup_iters,
                  eval_period=max(iterations // t.evaluations, 1),
                  log_period=t.log_period, augment=cfg.data.augment, seed=t.seed)


def _check_solver(s: DictConfig) -> None:
    """The solver's values named by their own keys, before the data is read (the runner,
    given them after, names its train.* keys)."""
    steps = list(s.lr_steps)
    rules = (
        ("batch_size", is_positive_int(s.batch_size), "a positive integer"),
        ("lr_steps", all(is_number(f) and 0 < f < 1 for f in steps) and steps == sorted(steps),
         "increasing fractions of the iterations, each in (0, 1)"),
        ("warmup_iters", isinstance(s.warmup_iters, int) and not isinstance(s.warmup_iters, bool)
         and s.warmup_iters >= 0, "an integer >= 0"))
    for key, valid, what in rules:
        if not valid:
            raise ConfigError(f"solver.{key} must be {what}, got {s[key]!r}")
    check_solver_values(s, "solver.")  # (SGD with a step decay)


def data_name(root: str) -> str:
    """The last two parts of the data path ('synthetic/classification', 'cifar-10-batches-py')."""
    parts = Path(root).resolve().parts
    return parts[-1] if parts[-1].startswith("cifar") else "/".join(parts[-2:])


def _check_path_sampling(cfg: DictConfig, depths: list[int]) -> None:
    """model.path_sampling's values, k against each residual net's blocks (built on the meta
    device): before the data is read and the plain twins are trained, not after."""
    settings = OmegaConf.to_container(cfg.model.path_sampling, resolve=True)
    if settings["mode"] == "drop_path" and settings["rate"] == 0:
        logger.warning("model.path_sampling.mode=drop_path with rate 0 drops no block: the "
                       "nets train as with mode=none (set model.path_sampling.rate)")
    for depth in depths:
        arch, model = _meta_residual_net(cfg, depth)
        try:
            sampler = apply_path_sampling(model.backbone, **settings)
        except ConfigError as e:
            raise ConfigError(f"{e} ({arch})" if len(depths) > 1 else str(e)) from None
        if sampler is not None:
            sampler.remove()


def _meta_residual_net(cfg: DictConfig, depth: int) -> tuple[str, nn.Module]:
    """(arch, the residual net of `depth` the config trains, built on the meta device: its
    blocks, without memory or time)."""
    arch = arch_name(cfg.model.family, depth, True)
    options = OmegaConf.to_container(cfg.model.options, resolve=True)
    with torch.device("meta"):
        return arch, build_classifier(arch, 2, config_prefix="model.options.", **options)


def build_context_from_config(cfg: DictConfig, output_dir: str | Path,
                              study: str | None = None, *, trains: bool = True
                              ) -> StudyContext:
    """Load the data, pick the device and thread count, and gather the settings of `study`
    (`trains`: False where the study analyses given weights: the training keys go unused)."""
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    d = cfg.data
    if not d.image_size >= 1:
        raise ConfigError(f"data.image_size must be at least 1 pixel, got {d.image_size}")
    for key in ("pixel_mean", "pixel_std"):
        if len(d[key]) != 3 or (key == "pixel_std" and min(d[key]) <= 0):
            raise ConfigError(f"data.{key} must be 3 values (R, G, B)"
                              f"{', each above 0' if key == 'pixel_std' else ''}, got {d[key]}")
    if "residual" in cfg.model.options:
        raise ConfigError("model.options.residual would make both twins of a study alike; the "
                          "studies build the residual net and its plain twin themselves")
    depths = {"model.depth": [cfg.model.depth]}
    if study == "degradation":
        depths["degradation.depths"] = list(cfg.degradation.depths)
    for key, values in depths.items():  # fail before loading data
        for depth in values:
            try:
                arch_name(cfg.model.family, depth, True)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
    if trains:
        _check_path_sampling(cfg, depths.get("degradation.depths", depths["model.depth"]))
    # limits of 0 meaning all (a negative one was taken as all too): key -> (value, what)
    limits = {f"data.{key}": (d[key], "images") for key in ("max_train", "max_val")}
    if study is not None:
        limits[f"{study}.max_train"] = (cfg[study].get("max_train", 0), "images")
    if study == "responses":
        limits["responses.max_images"] = (cfg.responses.max_images, "images")
    if study == "lesion":
        limits["lesion.max_k"] = (cfg.lesion.max_k, "blocks")
    for key, (value, what) in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key} must be a number of {what} >= 0 (0: all), got {value!r}")
    if study == "lesion" and cfg.lesion.max_k > 0 and trains:  # (given nets: run_lesion's)
        arch, net = _meta_residual_net(cfg, cfg.model.depth)
        warn_of_max_k_past_the_blocks(cfg.lesion.max_k, len(net.backbone.blocks()), arch)
    if not is_positive_int(cfg.train.eval_batch_size):
        raise ConfigError(f"train.eval_batch_size must be a positive integer (images per "
                          f"evaluation forward pass), got {cfg.train.eval_batch_size!r}")
    if study == "responses" and cfg.responses.layers not in LAYERS:  # not after the trainings
        raise ConfigError(f"responses.layers must be one of {', '.join(LAYERS)}, got "
                          f"{cfg.responses.layers!r}")
    recipe = recipe_from_config(cfg, study)  # its errors before the data is read
    device = init_distributed(cfg.train.device)
    # given weights: lesion and responses read no training image, paths a few batches (ImageNet's
    # 1.28M training images were all read, to hundreds of GB, for the class names alone)
    needed = (None if trains else cfg.paths.batches * cfg.paths.batch_size
              if study == "paths" else 0)
    max_train = d.max_train if needed is None or 0 < d.max_train < needed else needed
    train, val = load_splits(d.root, train_split=d.train_split, val_split=d.val_split,
                             image_size=d.image_size, max_train=max_train,
                             max_val=d.max_val, seed=cfg.train.seed,
                             train_images=needed != 0)
    if study is not None and cfg[study].max_train > 0:
        train = train.subset(cfg[study].max_train, seed=cfg.train.seed)
    return StudyContext(
        train=train, val=val, data_name=data_name(d.root), family=cfg.model.family,
        depth=cfg.model.depth,
        options=OmegaConf.to_container(cfg.model.options, resolve=True),  # type: ignore[arg-type]
        path_sampling=dict(OmegaConf.to_container(cfg.model.path_sampling, resolve=True)),
        recipe=recipe, pixel_mean=list(d.pixel_mean),
        pixel_std=list(d.pixel_std), device=device,
        eval_batch_size=cfg.train.eval_batch_size, output_dir=Path(output_dir),
        config=to_plain(cfg))
