"""Config -> segmenter: the one place where the `model` config tree becomes modules.

`build_model(cfg)` reads `cfg.model` (keys and defaults in configs/segmentation/base_deeplab.yaml)
and returns a `SemanticSegmentor`:
FCN, DeepLabV3 or DeepLabV3+ on any registered ResNet, optional auxiliary FCN head.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from resnet_detect import CONFIGS, backbones
from resnet_detect.backbones.layers import ShapeSpec
from resnet_detect.engine.config import config_from_mapping as engine_config_from_mapping
from resnet_detect.engine.config import load_config as engine_load_config
from resnet_detect.engine.config import (ConfigError, check_non_negative, config_section,
                                         is_number, is_positive_int, load_defaults, parse_bool)
from resnet_detect.engine.tasks import refuse_other_task_config

from .convert import load_segmentation_weights, weight_bound_settings
from .data import prefer_command_line_sources
from .heads import DeepLabV3Head, DeepLabV3PlusHead, FCNHead, SemSegHead, aspp_rates
from .model import SemanticSegmentor

HEADS = ("deeplabv3", "deeplabv3plus", "fcn")

BASE_CONFIG = CONFIGS / "segmentation" / "base_deeplab.yaml"


def defaults() -> DictConfig:
    """Every valid segmentation config key with its default (the base file)."""
    return load_defaults(BASE_CONFIG)


def provenance_from_config(cfg: Mapping[str, Any] | DictConfig,
                           class_names: Sequence[str]) -> dict[str, Any]:
    """What a segmenter checkpoint records (backbones.make_provenance): arch, backbone
    options, pixel mean/std, class names and the resolved config.

    Args:
        cfg: the full config the model was built from.
        class_names: the K class names, index = class id.
    """
    plain = _plain(cfg)
    mcfg = plain["model"]
    options = {k: v for k, v in mcfg["backbone"].items() if k != "weights"}
    return backbones.make_provenance(
        f"{mcfg['head']['name']}_{mcfg['backbone']['name']}", options,
        class_names=list(class_names), config=plain, pixel_mean=tuple(mcfg["pixel_mean"]),
        pixel_std=tuple(mcfg["pixel_std"]))


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """A segmentation config: `path` with its `_base_` files and `key=value` overrides,
    checked against the base file (an unknown key is an error naming it and its source)."""
    refuse_other_task_config(path, overrides, "sem_seg")
    cfg = engine_load_config(path, overrides, defaults=defaults())
    prefer_command_line_sources(cfg, overrides)
    return cfg


def config_from_mapping(config: Mapping[str, Any] | DictConfig, overrides: Sequence[str] = (),
                        source: str = "the checkpoint's config") -> DictConfig:
    """A segmentation config from a loaded mapping, checked like a file, then `overrides`."""
    cfg = engine_config_from_mapping(config, overrides, defaults=defaults(), source=source)
    prefer_command_line_sources(cfg, overrides)
    return cfg


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _shape(shapes: Mapping[str, ShapeSpec], name: str, key: str) -> ShapeSpec:
    if name not in shapes:
        raise ConfigError(f"{key} is {name!r}, which the backbone does not output; "
                          f"available: {list(shapes)}")
    return shapes[name]


def build_backbone(cfg: Mapping[str, Any]) -> nn.Module:
    """The dilated ResNet, returning every map the heads read, without the stages after them.

    Args:
        cfg: the `model` config.
    """
    hcfg, acfg = cfg["head"], cfg["aux_head"]
    keys = {"model.head.in_feature": hcfg["in_feature"]}  # the keys that name the features
    if hcfg["name"] == "deeplabv3plus":
        keys["model.head.low_level_feature"] = hcfg["low_level_feature"]
    if acfg["enabled"]:
        keys["model.aux_head.in_feature"] = acfg["in_feature"]
    try:
        resnet = backbones.build_from_config(cfg, list(dict.fromkeys(keys.values())))
    except ConfigError as e:  # named as a key segmentation configs do not have
        prefix = "model.backbone.out_features "
        if not str(e).startswith(prefix):
            raise
        named = ", ".join(f"{key}={feature}" for key, feature in keys.items())
        raise ConfigError(f"{named}: features {str(e)[len(prefix):]}") from None
    return resnet.drop_unused_stages()


def build_head(cfg: Mapping[str, Any], shapes: Mapping[str, ShapeSpec],
               num_classes: int) -> SemSegHead:
    """The main head ("loss_sem_seg") from `model.head`.

    Args:
        cfg: the `model` config.
        shapes: the backbone's output shapes by name.
        num_classes: K, background included.
    """
    hcfg = cfg["head"]
    name = hcfg["name"]
    _check_head_name(name)
    _check_head_numbers(hcfg, "model.head.", ("dropout", "aspp_dropout"),
                        ("channels", "low_level_channels"))
    deep = _shape(shapes, hcfg["in_feature"], "model.head.in_feature")
    common = {"num_classes": num_classes, "loss_name": "loss_sem_seg",
              "loss_weight": hcfg["loss_weight"], "ignore_index": cfg["ignore_index"],
              "class_weight": class_weight(cfg, num_classes)}
    separable = parse_bool(hcfg["separable"], "model.head.separable")
    if name == "fcn":
        if separable:
            raise ConfigError("model.head.separable is for the ASPP heads (deeplabv3, "
                              "deeplabv3plus); the fcn head has one full 3x3 conv")
        return FCNHead(in_feature=hcfg["in_feature"], in_channels=deep.channels,
                       channels=hcfg["channels"], norm=hcfg["norm"], dropout=hcfg["dropout"],
                       **common)
    given = hcfg["aspp_rates"]
    if given is not None and not (isinstance(given, Sequence) and not isinstance(given, str)
                                  and all(is_positive_int(r) for r in given)):
        raise ConfigError(f"model.head.aspp_rates must be a list of positive integers (the "
                          f"dilations of the ASPP's 3x3 branches, e.g. [6,12,18]), or null (or "
                          f"[]) for those of the output stride, got {given!r}")
    rates = given or aspp_rates(deep.stride)
    channels = hcfg["channels"] or 256
    if name == "deeplabv3":
        return DeepLabV3Head(in_feature=hcfg["in_feature"], in_channels=deep.channels,
                             rates=rates, channels=channels, norm=hcfg["norm"],
                             aspp_dropout=hcfg["aspp_dropout"],
                             separable=separable, **common)
    shallow = _shape(shapes, hcfg["low_level_feature"], "model.head.low_level_feature")
    return DeepLabV3PlusHead(
        in_feature=hcfg["in_feature"], in_channels=deep.channels,
        low_level_feature=hcfg["low_level_feature"], low_level_in_channels=shallow.channels,
        rates=rates, channels=channels, low_level_channels=hcfg["low_level_channels"],
        norm=hcfg["norm"], aspp_dropout=hcfg["aspp_dropout"], dropout=hcfg["dropout"],
        separable=separable, **common)


def build_aux_head(cfg: Mapping[str, Any], shapes: Mapping[str, ShapeSpec],
                   num_classes: int) -> FCNHead | None:
    """The auxiliary FCN head ("loss_aux") from `model.aux_head`, or None when disabled."""
    acfg = cfg["aux_head"]
    if not acfg["enabled"]:
        return None
    _check_head_numbers(acfg, "model.aux_head.", ("dropout",), ("channels",))
    shape = _shape(shapes, acfg["in_feature"], "model.aux_head.in_feature")
    return FCNHead(in_feature=acfg["in_feature"], in_channels=shape.channels,
                   channels=acfg["channels"], norm=cfg["head"]["norm"],
                   dropout=acfg["dropout"], num_classes=num_classes, loss_name="loss_aux",
                   loss_weight=acfg["loss_weight"], ignore_index=cfg["ignore_index"],
                   class_weight=class_weight(cfg, num_classes))


def class_weight(cfg: Mapping[str, Any], num_classes: int) -> list[float] | None:
    """`model.class_weight`, checked: one non-negative number per class, not all 0."""
    weights = cfg.get("class_weight")
    if weights is None:
        return None
    if (not isinstance(weights, Sequence) or isinstance(weights, str)
            or not all(is_number(w) and 0 <= w < math.inf for w in weights) or not any(weights)):
        listed = (" (mmsegmentation's file of them: write the list here)"
                  if isinstance(weights, str) else "")
        raise ConfigError(f"model.class_weight must be a list of finite non-negative numbers, "
                          f"one per class, not all 0 (or null), got {weights!r}{listed}")
    if len(weights) != num_classes:
        raise ConfigError(f"model.class_weight has {len(weights)} weights for {num_classes} "
                          f"classes (model.num_classes, background included): one per class")
    return [float(w) for w in weights]


def _check_head_numbers(section: Mapping[str, Any], prefix: str, dropouts: Sequence[str],
                        widths: Sequence[str]) -> None:
    """A negative loss weight (gradient ascent on it), a dropout of 1 or more, and channel
    counts below 1 (null: the head's default) named before anything is built."""
    check_non_negative(section, ("loss_weight",), prefix)
    for key in dropouts:
        value = section[key]
        if not (is_number(value) and 0 <= value < 1):
            raise ConfigError(f"{prefix}{key} must be a probability in [0, 1) (1 zeroes every "
                              f"feature), got {value!r}")
    for key in widths:
        if section[key] is not None and not is_positive_int(section[key]):
            raise ConfigError(f"{prefix}{key} must be a positive integer (channels)"
                              f"{' or null' if key == 'channels' else ''}, got "
                              f"{section[key]!r}")


def _check_head_name(name: str) -> None:
    if name not in HEADS:
        raise ConfigError(f"unknown model.head.name {name!r}; valid: {', '.join(HEADS)}")


def build_model(cfg: Mapping[str, Any] | DictConfig,
                class_names: Sequence[str] | None = None) -> SemanticSegmentor:
    """Segmenter from a full config (its `model` subtree).

    `model.backbone.weights` loads backbone weights while building the backbone;
    `model.weights` (whole-segmenter weights: own checkpoint or a torchvision DeepLabV3/FCN
    state dict) is loaded last, strictly but for the classifiers when the weights were trained
    on another class count (those start afresh: fine-tuning).

    Args:
        cfg: config with a `model` subtree as in the base file.
        class_names: the classes trained on (fine-tuning `model.weights`): see
            `backbones.model_weights.load_whole_model_weights`.
    """
    mcfg = _plain(cfg["model"])
    if mcfg.get("arch", "semantic_segmentor") != "semantic_segmentor":
        raise ConfigError(f"segmentation.build_model builds model.arch 'semantic_segmentor', "
                         f"got {mcfg.get('arch')!r}")
    num_classes = mcfg.get("num_classes")
    if not is_positive_int(num_classes):
        raise ConfigError(f"model.num_classes must be a positive integer (classes including "
                          f"background; set it, or let the training script read it from the "
                          f"data), got {num_classes!r}")
    if num_classes == 1:  # its softmax is 1 everywhere: nothing learnt, every pixel right
        raise ConfigError("a segmenter needs at least 2 classes (model.num_classes, "
                          "data.class_names), got 1: binary masks (0 = background, 1 = the "
                          "object) are 2 classes, e.g. data.class_names=[background,object]")
    with config_section("model.backbone"):
        backbone = build_backbone(mcfg)
    shapes = backbone.output_shape()
    size_divisibility = mcfg["size_divisibility"]
    with config_section("model.head"):
        head = build_head(mcfg, shapes, num_classes)
    with config_section("model.aux_head"):
        aux_head = build_aux_head(mcfg, shapes, num_classes)
    with config_section("model"):
        model = SemanticSegmentor(
            backbone=backbone,
            head=head,
            aux_head=aux_head,
            pixel_mean=mcfg["pixel_mean"],
            pixel_std=mcfg["pixel_std"],
            size_divisibility=(backbone.size_divisibility if size_divisibility is None
                               else size_divisibility),
            ignore_index=mcfg["ignore_index"],
        )
    if mcfg.get("weights"):
        load_segmentation_weights(model, mcfg["weights"], weight_bound_settings(mcfg),
                                  new_classes=True, class_names=class_names, model_config=mcfg)
    return model
