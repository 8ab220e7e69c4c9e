"""ResNet backbones: `build(name, **options)`, `build_classifier`, `load_weights`,
`register_backbone` (a ResNet variant of your own, by name)."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from resnet_detect.engine.config import ConfigError

from .classifier import Classifier
from .layers import FrozenBatchNorm2d, ShapeSpec, build_norm
from .registry import build_resnet, list_models, register_backbone
from .resnet import BasicBlock, Bottleneck, ResidualBlock, ResNet
from .weights import (PIXEL_MEAN, PIXEL_STD, convert_torchvision_resnet, load_weights,
                      make_provenance, read_checkpoint, refuse_other_normalisation,
                      save_checkpoint, torchvision_resnet_state_dict, unwrap_state_dict)

logger = logging.getLogger(__name__)
# Options that change how weights must be used; a checkpoint's provenance supplies them
# when the caller did not say.
_WEIGHT_DEFINING_OPTIONS = ("stride_in_1x1", "groups", "width_per_group", "width", "shortcut",
                            "residual", "deep_stem", "avg_down")


def build(name: str, *, weights: str | os.PathLike | Mapping[str, Any] | None = None,
          config_prefix: str = "",
          **options: Any) -> ResNet:
    """Build a backbone by registered name, optionally loading `weights` (a file, or a
    checkpoint or state dict already loaded) strictly.

    A checkpoint written by this project also supplies the architecture options it was
    trained with (e.g. stride_in_1x1) unless they are given here. `config_prefix`: where
    these options sit in the caller's config (e.g. "model.backbone."), for messages.
    """
    checkpoint = (weights if isinstance(weights, Mapping) or weights is None
                  else read_checkpoint(weights))
    source = "the given state dict" if isinstance(weights, Mapping) else str(weights)
    provenance = unwrap_state_dict(checkpoint)[1] if checkpoint is not None else None
    if provenance:
        for key in _WEIGHT_DEFINING_OPTIONS:
            if key in provenance.get("options", {}) and key not in options:
                options[key] = provenance["options"][key]
                logger.info("%s=%s from the provenance of %s", key, options[key], source)
    model = build_resnet(name, config_prefix, **options)
    model.arch = name
    if checkpoint is not None:
        freeze_at = model.freeze_at
        load_weights(model, checkpoint, source=source, config_prefix=config_prefix)
        model.freeze(freeze_at)
    return model


def build_from_config(model_cfg: Mapping[str, Any], out_features: Sequence[str]) -> ResNet:
    """The ResNet of a detector's or segmenter's `model` config: its `backbone` section (with
    its weights, which a model.weights giving the whole model's need not have), returning
    `out_features`;
    weights that record another pixel normalisation than model.pixel_mean / pixel_std are
    refused."""
    bcfg = model_cfg["backbone"]
    # whole-model weights replace every backbone tensor: its own file is not needed (where it
    # is there, it is read still: its provenance may set the architecture, width and groups)
    weights = bcfg["weights"]
    if model_cfg.get("weights") and weights and not os.path.isfile(weights):
        weights = None
    resnet = build(bcfg["name"], weights=weights, config_prefix="model.backbone.",
                   norm=bcfg["norm"], freeze_at=bcfg["freeze_at"],
                   output_stride=bcfg["output_stride"],
                   multi_grid=tuple(bcfg["multi_grid"]) if bcfg["multi_grid"] else None,
                   stride_in_1x1=bcfg["stride_in_1x1"], out_features=tuple(out_features))
    refuse_other_normalisation(resnet, str(weights), model_cfg)
    return resnet


def build_classifier(name: str, num_classes: int, *, weights: str | os.PathLike | None = None,
                     config_prefix: str = "", **options: Any) -> Classifier:
    """Backbone `name` + average pool + fc; `weights` may be torchvision, timm or own, of
    `num_classes` outputs (others are refused, naming how to start a new fc from them: an
    evaluation must not score a random one). `config_prefix`: as for `build`."""
    options.pop("out_features", None)
    backbone = build_resnet(name, config_prefix, **options)
    backbone.arch = name  # fine-tuning loads into it: messages name both networks
    model = Classifier(backbone=backbone, num_classes=num_classes)
    model.arch, model.options = name, dict(options)
    if weights is not None:
        checkpoint = read_checkpoint(weights)
        fc = unwrap_state_dict(checkpoint)[0].get("fc.weight")
        if fc is not None and fc.shape[0] != num_classes:
            raise ConfigError(
                f"{weights} is a classifier of {fc.shape[0]} outputs, and this one has "
                f"{num_classes}: to fine-tune from its backbone with a new fc, build without "
                f"weights and load them into the backbone, backbones.load_weights(model.backbone, "
                f"{str(weights)!r}) (tools/pretrain.py's model.weights does so)")
        load_weights(model, checkpoint, source=str(weights), config_prefix=config_prefix)
    return model


__all__ = ["BasicBlock", "Bottleneck", "Classifier", "FrozenBatchNorm2d", "PIXEL_MEAN",
           "PIXEL_STD", "ResNet", "ResidualBlock", "ShapeSpec", "build", "build_classifier",
           "build_from_config", "build_norm", "convert_torchvision_resnet", "list_models",
           "load_weights", "make_provenance", "read_checkpoint", "register_backbone",
           "save_checkpoint", "torchvision_resnet_state_dict"]
