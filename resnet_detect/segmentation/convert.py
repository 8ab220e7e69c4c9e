"""Segmenter weights: import torchvision DeepLabV3 / FCN state dicts, load own checkpoints.

torchvision's `deeplabv3_resnet50/101` and `fcn_resnet50/101` number classes 0..K-1 with
0 = background, as this project does, so the classifier rows keep their order. Their
backbone is a ResNet with `replace_stride_with_dilation=[False, True, True]` (output stride
8, no multi-grid) and the DeepLabV3 ASPP rates are 12/24/36: build the model with those
settings (configs/segmentation/deeplabv3_R_50_os8.yaml with `model.backbone.multi_grid: null`)
to import them.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from resnet_detect.backbones.model_weights import (WholeModelFormat, dilation_layout,
                                                   load_whole_model_weights)
from resnet_detect.backbones.weights import convert_torchvision_resnet

from .heads import ASPP_RATES


# torchvision DeepLabHead: Sequential(ASPP, conv3x3, bn, relu, conv1x1); ASPP.convs =
# [1x1 branch, 3x3 branches..., ASPPPooling(avgpool, conv, bn, relu)] and ASPP.project.
_ASPP_BRANCH = re.compile(r"^classifier\.0\.convs\.(\d+)\.([01])\.(.+)$")
_ASPP_POOL = re.compile(r"^classifier\.0\.convs\.(\d+)\.([12])\.(.+)$")
_DEEPLAB = {"classifier.0.project.0.": "head.aspp.project.conv.",
            "classifier.0.project.1.": "head.aspp.project.norm.",
            "classifier.1.": "head.fuse.conv.", "classifier.2.": "head.fuse.norm.",
            "classifier.4.": "head.predictor."}
# torchvision FCNHead: Sequential(conv3x3, bn, relu, dropout, conv1x1)
_FCN = {"classifier.0.": "head.conv.conv.", "classifier.1.": "head.conv.norm.",
        "classifier.4.": "head.predictor."}
_AUX = {"aux_classifier.0.": "aux_head.conv.conv.", "aux_classifier.1.": "aux_head.conv.norm.",
        "aux_classifier.4.": "aux_head.predictor."}


def is_torchvision_segmentation(state_dict: Mapping[str, Any]) -> bool:
    """True for a torchvision DeepLabV3 or FCN (ResNet) state dict."""
    return "backbone.conv1.weight" in state_dict and any(k.startswith("classifier.")
                                                         for k in state_dict)


def _replace_prefix(key: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return None


def convert_torchvision_segmentation(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a torchvision `deeplabv3_resnet*` or `fcn_resnet*` state dict to this project's keys.

    backbone.* -> backbone.* (ResNet keys converted), classifier.* -> head.*,
    aux_classifier.* -> aux_head.*.

    Raises:
        ValueError: a key that belongs to neither layout.
    """
    deeplab = "classifier.0.convs.0.0.weight" in state_dict
    num_aspp = 1 + max((int(m.group(1)) for k in state_dict
                        if (m := re.match(r"^classifier\.0\.convs\.(\d+)\.", k))), default=0)
    backbone = convert_torchvision_resnet(
        {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")})
    converted = {f"backbone.{k}": v for k, v in backbone.items()}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            continue
        new = _replace_prefix(key, _AUX)
        if new is None and deeplab:
            branch, pool = _ASPP_BRANCH.match(key), _ASPP_POOL.match(key)
            if branch and int(branch.group(1)) < num_aspp - 1:
                part = "conv" if branch.group(2) == "0" else "norm"
                new = f"head.aspp.branches.{branch.group(1)}.{part}.{branch.group(3)}"
            elif pool and int(pool.group(1)) == num_aspp - 1:
                part = "conv" if pool.group(2) == "1" else "norm"
                new = f"head.aspp.pooling.{part}.{pool.group(3)}"
            else:
                new = _replace_prefix(key, _DEEPLAB)
        elif new is None:
            new = _replace_prefix(key, _FCN)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = value
    if unknown:
        raise ValueError(f"not a torchvision DeepLabV3/FCN state dict: unknown keys "
                         f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    return converted


_FEATURE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def weight_bound_settings(mcfg: Mapping[str, Any]) -> dict[str, Any]:
    """The `model` keys that change what a segmenter's weights compute without changing any
    tensor shape, with derived values filled in (config key -> value)."""
    b, h = mcfg["backbone"], mcfg["head"]
    settings = {
        "model.backbone.output_stride": b["output_stride"],
        "model.backbone.multi_grid": dilation_layout(b),
        "model.backbone.stride_in_1x1": bool(b.get("stride_in_1x1", False)),
        "model.head.name": h["name"], "model.head.in_feature": h["in_feature"]}
    if h["name"] in ("deeplabv3", "deeplabv3plus"):
        stride = min(_FEATURE_STRIDES.get(h["in_feature"], 32), b["output_stride"])
        settings["model.head.aspp_rates"] = list(h.get("aspp_rates") or ASPP_RATES.get(stride, []))
    return settings


def torchvision_settings(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """What a torchvision DeepLabV3 / FCN state dict was trained with (its builders fix it):
    output stride 8 without multi-grid, stride on the 3x3 conv, ASPP rates 12/24/36."""
    deeplab = "classifier.0.convs.0.0.weight" in state_dict
    settings = {"model.backbone.output_stride": 8, "model.backbone.multi_grid": None,
                "model.backbone.stride_in_1x1": False,
                "model.head.name": "deeplabv3" if deeplab else "fcn",
                "model.head.in_feature": "res5"}
    if deeplab:
        settings["model.head.aspp_rates"] = [12, 24, 36]
    return settings


# the layers whose shapes follow model.num_classes
CLASS_LAYERS = ("head.predictor.", "aux_head.predictor.")


# torchvision's aux_loss=True / False weights load into a model with / without the aux head
SEGMENTER_WEIGHTS = WholeModelFormat(
    task="sem_seg", is_torchvision=is_torchvision_segmentation,
    convert_torchvision=convert_torchvision_segmentation,
    torchvision_settings=torchvision_settings, own_settings=weight_bound_settings,
    optional_head="aux_head.", class_layers=CLASS_LAYERS)


def load_segmentation_weights(model: nn.Module, weights: str | os.PathLike | Mapping[str, Any],
                              settings: Mapping[str, Any] | None = None, *,
                              source: str | None = None, new_classes: bool = False,
                              inference: bool = False, class_names: Sequence[str] | None = None,
                              model_config: Mapping[str, Any] | None = None
                              ) -> dict[str, Any] | None:
    """Load whole-segmenter weights (own checkpoint or torchvision state dict), strictly.

    An auxiliary head's weights are dropped (with a log line) when the model has none, so a
    torchvision checkpoint trained with `aux_loss=True` loads into a model without one.

    Args:
        model: a `SemanticSegmentor`.
        weights: a file path or a loaded checkpoint / state dict.

        settings: the model's `weight_bound_settings`; weights trained or converted with
            other values are refused (what torchvision's builders fix, or what an own
            checkpoint's provenance config says).
        source: names the weights in messages (default: the path).
        new_classes: the classifiers of weights trained on another class count start from
            scratch (with a warning) instead of being refused: fine-tuning to new classes.
        inference: `model` was built without its aux head, which only training uses: the
            weights' copy, if any, is dropped without a word.
        class_names: the classes trained on; see `load_whole_model_weights`.
        model_config: the `model` section `model` was built from; see
            `load_whole_model_weights`.

    Returns:
        The checkpoint's provenance (None for torchvision weights).
    """
    return load_whole_model_weights(model, weights, SEGMENTER_WEIGHTS, settings, source=source,
                                    new_classes=new_classes, unused_head=inference,
                                    class_names=class_names, model_config=model_config)
