"""Detector weights: import torchvision Faster/Mask R-CNN state dicts, load any checkpoint.

torchvision's ``fasterrcnn_resnet50_fpn`` numbers classes 0..C-1 with 0 = background
(C = 91 for COCO: the 90 category-id slots). Here classes are 0..K-1 with background
at index K, so K = C - 1 and our class k is torchvision's class k + 1 (for COCO, the
category id). The classifier rows move accordingly and the background box deltas are
dropped; for ``maskrcnn_resnet50_fpn`` the background mask channel is dropped too.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from resnet_detect.backbones.model_weights import (WholeModelFormat, dilation_layout,
                                                   load_whole_model_weights)
from resnet_detect.backbones.weights import (convert_torchvision_resnet, read_checkpoint,
                                             unwrap_state_dict)
from resnet_detect.engine.data import brief

_FPN = re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(?:0\.)?(weight|bias)$")
_RPN_HEAD = {
    "rpn.head.conv.0.0.": "rpn.head.conv.",  # torchvision >= 0.13 (Conv2dNormActivation)
    "rpn.head.conv.": "rpn.head.conv.",
    "rpn.head.cls_logits.": "rpn.head.objectness_logits.",
    "rpn.head.bbox_pred.": "rpn.head.anchor_deltas.",
}
_BOX_HEAD = {
    "roi_heads.box_head.fc6.": "roi_heads.box_head.fc1.",
    "roi_heads.box_head.fc7.": "roi_heads.box_head.fc2.",
}
# torchvision >= 0.13 "mask_head.{i}.0." (Conv2dNormActivation), older "mask_head.mask_fcn{i+1}."
_MASK_CONV = re.compile(r"^roi_heads\.mask_head\.(?:(\d+)\.0|mask_fcn(\d+))\.(weight|bias)$")
_MASK_PREDICTOR = {
    "roi_heads.mask_predictor.conv5_mask.": "roi_heads.mask_head.deconv.",
    "roi_heads.mask_predictor.mask_fcn_logits.": "roi_heads.mask_head.predictor.",
}

logger = logging.getLogger(__name__)


def is_torchvision_faster_rcnn(state_dict: Mapping[str, Any]) -> bool:
    """True for a torchvision ``FasterRCNN`` (or ``MaskRCNN``) state dict."""
    return "rpn.head.cls_logits.weight" in state_dict and any(
        k.startswith("backbone.body.") for k in state_dict
    )


def coco_rows_of_torchvision_weights(weights: str | os.PathLike | Mapping[str, Any],
                                     category_ids: Sequence[int], class_names: Sequence[str]
                                     ) -> Mapping[str, Any]:
    """torchvision's COCO detectors' class rows are COCO's 91 category-id slots (0 the
    background): weights fine-tuned on COCO categories (all 80, or some by data.classes)
    keep the rows of those ids where the data names them as COCO does, instead of the whole
    classifier starting afresh for "another class count" (said). Other weights come back
    as read."""
    source = weights if not isinstance(weights, Mapping) else "the weights"
    if not isinstance(weights, Mapping):
        weights = read_checkpoint(weights)
    state_dict, _ = unwrap_state_dict(weights)
    key = "roi_heads.box_predictor.cls_score.weight"
    if not is_torchvision_faster_rcnn(state_dict) or key not in state_dict:
        return weights
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
    coco = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    rows = state_dict[key].shape[0]
    if rows != len(coco) or rows == len(category_ids) + 1 or not all(
            0 < int(c) < rows and coco[int(c)] == name
            for c, name in zip(category_ids, class_names, strict=True)):
        return weights
    keep = torch.tensor([0, *(int(c) for c in category_ids)])
    box_rows = (keep[:, None] * 4 + torch.arange(4)).reshape(-1)
    picked = dict(state_dict)
    for name, value in state_dict.items():
        if name.startswith(("roi_heads.box_predictor.cls_score.",
                            "roi_heads.mask_predictor.mask_fcn_logits.")):
            picked[name] = value[keep]
        elif name.startswith("roi_heads.box_predictor.bbox_pred."):
            picked[name] = value[box_rows]
    logger.info("%s: torchvision's COCO classifier rows of the category ids %s are kept (the "
                "data names them as COCO does)", source, brief(list(category_ids)))
    return picked


def has_mask_head(state_dict: Mapping[str, Any]) -> bool:
    """True when detector weights (own or torchvision) include a Mask R-CNN mask head."""
    prefixes = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")
    return any(k.startswith(prefixes) for k in state_dict)


def convert_torchvision_faster_rcnn(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Maps a torchvision Faster R-CNN or Mask R-CNN (ResNet-FPN) state dict to this project's keys.

    Backbone keys go through ``backbones.weights.convert_torchvision_resnet`` under
    ``backbone.bottom_up.``; BatchNorm ``num_batches_tracked`` counters are dropped; the
    mask head's convs become ``mask_fcn1..4``, its ``conv5_mask`` the ``deconv`` and its
    ``mask_fcn_logits`` the ``predictor`` (background channel dropped); keys this mapping
    does not know are kept unchanged for the caller.

    Args:
        state_dict: torchvision model state dict.

    Returns:
        The converted state dict.
    """
    body = {
        k[len("backbone.body.") :]: v
        for k, v in state_dict.items()
        if k.startswith("backbone.body.")
    }
    out = {
        f"backbone.bottom_up.{k}": v
        for k, v in convert_torchvision_resnet(body).items()
        if not k.endswith("num_batches_tracked")
    }
    for key, value in state_dict.items():
        if key.startswith("backbone.body.") or key.endswith("num_batches_tracked"):
            continue
        match = _FPN.match(key)
        if match:
            kind, idx, param = match.groups()
            name = "lateral_convs" if kind == "inner_blocks" else "output_convs"
            out[f"backbone.{name}.{idx}.{param}"] = value
            continue
        match = _MASK_CONV.match(key)
        if match:
            new_idx, old_idx, param = match.groups()
            number = int(new_idx) + 1 if new_idx is not None else int(old_idx)
            out[f"roi_heads.mask_head.mask_fcn{number}.{param}"] = value
            continue
        new_key = key
        for old, new in {**_RPN_HEAD, **_BOX_HEAD, **_MASK_PREDICTOR}.items():
            if key.startswith(old):
                new_key = new + key[len(old) :]
                break
        if key.startswith("roi_heads.box_predictor.cls_score."):
            # rows (bg, c1..cK) -> (c1..cK, bg)
            value = torch.cat([value[1:], value[:1]])
        elif key.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:]  # drop the background class's 4 deltas
        elif key.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
            value = value[1:]  # drop the background class's mask channel
        out[new_key] = value
    return out


# The `model` keys that change what a detector's weights compute without changing any tensor
# shape; torchvision's fasterrcnn/maskrcnn_resnet50_fpn builders fix them to these values.
TORCHVISION_SETTINGS: dict[str, Any] = {
    "model.backbone.output_stride": 32,
    "model.backbone.stride_in_1x1": False,
    "model.backbone.multi_grid": None,  # torchvision's dilation layout (see dilation_layout)
    "model.fpn.top_block": "maxpool",
    "model.anchor_generator.sizes": [[32], [64], [128], [256], [512]],
    "model.anchor_generator.aspect_ratios": [[0.5, 1.0, 2.0]],
    "model.anchor_generator.offset": 0.0,
    "model.rpn.bbox_reg_weights": [1.0, 1.0, 1.0, 1.0],
    "model.roi_heads.bbox_reg_weights": [10.0, 10.0, 5.0, 5.0],
    "model.roi_heads.pooler_aligned": False,
    "model.roi_heads.pooler_sampling_ratio": 2,
    "model.roi_heads.canonical_box_size": 224,
    "model.roi_heads.canonical_level": 4,
    "model.pixel_mean": [123.675, 116.28, 103.53],
    "model.pixel_std": [58.395, 57.12, 57.375],
}


MASK_POOLER = "model.roi_heads.mask_pooler_resolution"  # (Mask R-CNN's alone)
MASK_HEAD = "roi_heads.mask_head."  # the keys of a Mask R-CNN's mask head

# the layers whose shapes follow model.num_classes
CLASS_LAYERS = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
                "roi_heads.mask_head.predictor.")


def weight_bound_settings(mcfg: Mapping[str, Any]) -> dict[str, Any]:
    """The values of `TORCHVISION_SETTINGS`' keys in a `model` config (config key -> value);
    the FPN's top block only when there is an FPN."""
    if isinstance(mcfg, DictConfig):
        mcfg = OmegaConf.to_container(mcfg, resolve=True)  # type: ignore[assignment]
    settings = {"model.backbone.multi_grid": dilation_layout(mcfg["backbone"])}
    for key in TORCHVISION_SETTINGS.keys() - settings.keys():
        node: Any = mcfg
        for part in key.split(".")[1:]:
            node = node[part]
        settings[key] = node
    if not mcfg["fpn"]["enabled"]:
        del settings["model.fpn.top_block"]
    if mcfg["mask_on"]:  # (the same convolutions on a finer or coarser grid of each RoI)
        settings[MASK_POOLER] = mcfg["roi_heads"]["mask_pooler_resolution"]
    return settings


def mask_head_hint(model: nn.Module, state_dict: Mapping[str, Any]) -> str:
    """Where the weights' mask head has other convolutions than the model's (torchvision's
    four of 256, a config's mask_conv_dims): the key to set, for the mis-shaped tensors."""
    def widths(weights: Mapping[str, Any]) -> list[int] | None:
        if f"{MASK_HEAD}deconv.weight" not in weights:
            return None
        found: list[int] = []
        while f"{MASK_HEAD}mask_fcn{len(found) + 1}.weight" in weights:
            found.append(int(weights[f"{MASK_HEAD}mask_fcn{len(found) + 1}.weight"].shape[0]))
        return found
    theirs, ours = widths(state_dict), widths(model.state_dict())
    if theirs is None or ours is None or theirs == ours:
        return ""
    return (f" (its mask head's convolutions are {theirs}: set "
            f"model.roi_heads.mask_conv_dims=[{','.join(map(str, theirs))}])")


def torchvision_settings(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """What torchvision's builders fixed, for its Faster R-CNN or (a mask head's weights
    among them) Mask R-CNN state dict."""
    masks = any(key.startswith(MASK_HEAD) for key in state_dict)  # (torchvision's prefix too)
    return {**TORCHVISION_SETTINGS, **({MASK_POOLER: 14} if masks else {})}


# Mask R-CNN weights load into a Faster R-CNN, or (fine-tuning) the reverse
DETECTOR_WEIGHTS = WholeModelFormat(
    task="detection", is_torchvision=is_torchvision_faster_rcnn,
    convert_torchvision=convert_torchvision_faster_rcnn,
    torchvision_settings=torchvision_settings,
    own_settings=weight_bound_settings, optional_head=MASK_HEAD, shape_hint=mask_head_hint,
    class_layers=CLASS_LAYERS)


def load_detector_weights(
    model: nn.Module, weights: str | os.PathLike | Mapping[str, Any],
    settings: Mapping[str, Any] | None = None, *, source: str | None = None,
    new_classes: bool = False, class_names: Sequence[str] | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> dict | None:
    """Strictly loads detector weights: an own checkpoint or a torchvision state dict
    (`load_whole_model_weights` with `DETECTOR_WEIGHTS`).

    Args:
        model: the detector to fill.
        weights: a file path, or an already loaded checkpoint / state dict.
        settings: the model's `weight_bound_settings`; weights trained or converted with
            other values are refused (torchvision's fixed values, or what an own checkpoint's
            provenance config says).
        source: names the weights in messages (default: the path).
        new_classes: the predictors of weights trained on another class count start from
            scratch (with a warning) instead of being refused: fine-tuning, e.g. from COCO.
        class_names: the classes trained on; see `load_whole_model_weights`.
        model_config: the `model` section `model` was built from; see
            `load_whole_model_weights`.

    Returns:
        The checkpoint's provenance (None for foreign weights).
    """
    return load_whole_model_weights(model, weights, DETECTOR_WEIGHTS, settings, source=source,
                                    new_classes=new_classes, class_names=class_names,
                                    model_config=model_config)
