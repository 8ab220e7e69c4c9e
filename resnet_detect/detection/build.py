"""Config -> Faster R-CNN: the one place where the ``model`` config tree becomes modules.

``build_model(cfg)`` reads ``cfg.model`` (keys and defaults in
``configs/detection/base_faster_rcnn.yaml``) and returns a ``GeneralizedRCNN``: FPN, C4
(``roi_heads.name: res5``) or DC5 variants, any registered ResNet backbone, and with
``model.mask_on`` the Mask R-CNN mask branch (``model.roi_heads.mask_*`` keys).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from resnet_detect.engine.config import (ConfigError, check_counts, check_non_negative,
                                         check_probability, config_section)
from resnet_detect.engine.logging import warn_once
from resnet_detect import backbones
from resnet_detect.backbones.layers import ShapeSpec

from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .convert import (coco_rows_of_torchvision_weights, load_detector_weights,
                      weight_bound_settings)
from .fpn import FPN, LastLevelMaxPool
from .matcher import Matcher
from .poolers import MultiLevelRoIAlign
from .rcnn import GeneralizedRCNN
from .roi_heads import (
    FastRCNNFCHead,
    FastRCNNOutputs,
    MaskRCNNHead,
    Res5ROIHeads,
    ROIHeads,
    StandardROIHeads,
)
from .rpn import RPN, RPNHead
from .sampler import BalancedSampler

logger = logging.getLogger(__name__)

ROI_HEADS = ("standard", "res5")
TOP_BLOCKS = ("maxpool",)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _shapes_of(backbone: nn.Module, names: list[str], key: str) -> dict[str, ShapeSpec]:
    shapes = backbone.output_shape()
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ConfigError(
            f"{key} names {missing}, which the backbone does not output; available: {list(shapes)}"
        )
    return {n: shapes[n] for n in names}


def build_backbone(cfg: Mapping[str, Any]) -> tuple[nn.Module, nn.Module | None]:
    """Backbone (wrapped in an FPN when enabled) and, for a res5 RoI head, the res5 stage.

    Args:
        cfg: the ``model`` config.

    Returns:
        The feature extractor and the res5 stage taken out of the ResNet (None unless
        ``roi_heads.name`` is ``res5``).
    """
    bcfg = cfg["backbone"]
    res5_head = cfg["roi_heads"]["name"] == "res5"
    out_features = list(bcfg["out_features"])
    if res5_head and "res5" in out_features:
        raise ConfigError(
            "model.backbone.out_features must stop before res5 when "
            "model.roi_heads.name is res5 (res5 runs in the RoI head)"
        )
    resnet = backbones.build_from_config(cfg, out_features)
    # stages past out_features never run: DistributedDataParallel refuses parameters without
    # gradients, so they are dropped (a res5 head takes res5 first)
    res5 = take_res5(resnet) if res5_head else None
    resnet.drop_unused_stages()
    fcfg = cfg["fpn"]
    if not fcfg["enabled"]:
        return resnet, res5
    top_block = fcfg["top_block"]
    _check_top_block(top_block)
    _shapes_of(resnet, list(fcfg["in_features"]), "model.fpn.in_features")
    fpn = FPN(
        bottom_up=resnet,
        in_features=list(fcfg["in_features"]),
        out_channels=fcfg["out_channels"],
        top_block=LastLevelMaxPool() if top_block == "maxpool" else None,
    )
    return fpn, res5


def take_res5(resnet: nn.Module) -> nn.Module:
    """Removes the res5 stage from a ResNet (whose out_features stop before it) and returns it.

    Args:
        resnet: a ``backbones.ResNet`` with weights already loaded.
    """
    if "res5" not in getattr(resnet, "stages", ()):
        raise ConfigError("model.roi_heads.name res5 needs a backbone with a res5 stage")
    res5 = resnet.res5
    del resnet.res5
    resnet.stages = [s for s in resnet.stages if s != "res5"]
    return res5


def build_rpn(cfg: Mapping[str, Any], shapes: Mapping[str, ShapeSpec]) -> RPN:
    """RPN from the ``model`` config.

    Args:
        cfg: the ``model`` config.
        shapes: the backbone's output shapes by name.
    """
    rcfg = cfg["rpn"]
    in_features = list(rcfg["in_features"])
    in_shapes = [shapes[f] for f in in_features] if all(f in shapes for f in in_features) else None
    if in_shapes is None:
        raise ConfigError(
            f"model.rpn.in_features {in_features} are not all backbone outputs {list(shapes)}"
        )
    channels = {s.channels for s in in_shapes}
    if len(channels) != 1:
        raise ConfigError(
            f"model.rpn.in_features must have equal channels, got {[s.channels for s in in_shapes]}"
        )
    acfg = cfg["anchor_generator"]
    sizes = _plain(acfg["sizes"])
    if isinstance(sizes, list) and len(sizes) == 1 and isinstance(sizes[0], list):
        sizes = sizes * len(in_features)  # one list for every level, as detectron2 reads it
    anchor_generator = AnchorGenerator(
        sizes=sizes,
        aspect_ratios=_plain(acfg["aspect_ratios"]),
        offset=acfg["offset"],
    )
    thresholds = _plain(rcfg["iou_thresholds"])
    if not isinstance(thresholds, list) or len(thresholds) != 2:
        raise ConfigError(f"model.rpn.iou_thresholds must be [low, high] (below low: background, "
                          f"from high: foreground), got {thresholds!r}")
    low, high = thresholds
    return RPN(
        in_features=in_features,
        head=RPNHead(
            in_channels=channels.pop(), num_anchors=anchor_generator.num_anchors_per_location[0]
        ),
        anchor_generator=anchor_generator,
        box_coder=BoxCoder(weights=rcfg["bbox_reg_weights"]),
        matcher=Matcher(
            low_threshold=low,
            high_threshold=high,
            allow_low_quality_matches=rcfg["allow_low_quality_matches"],
        ),
        sampler=BalancedSampler(
            batch_size_per_image=rcfg["batch_size_per_image"],
            positive_fraction=rcfg["positive_fraction"],
        ),
        pre_nms_topk=(rcfg["pre_nms_topk_train"], rcfg["pre_nms_topk_test"]),
        post_nms_topk=(rcfg["post_nms_topk_train"], rcfg["post_nms_topk_test"]),
        nms_thresh=rcfg["nms_thresh"],
        min_box_size=rcfg["min_box_size"],
        score_thresh=rcfg["score_thresh"],
        smooth_l1_beta=rcfg["smooth_l1_beta"],
        loss_weight=rcfg["loss_weight"],
    )


def build_mask_branch(
    cfg: Mapping[str, Any], shapes: Mapping[str, ShapeSpec], num_classes: int
) -> tuple[MultiLevelRoIAlign, MaskRCNNHead] | tuple[None, None]:
    """Mask pooler and mask head from the ``model`` config; (None, None) unless ``mask_on``.

    The mask pooler reads the box pooler's feature maps, sampling ratio and alignment;
    the gt masks are cropped with the same alignment.

    Args:
        cfg: the ``model`` config.
        shapes: the backbone's output shapes by name.
        num_classes: number K of foreground classes.
    """
    if not cfg["mask_on"]:
        _warn_of_unused_mask_keys(cfg["roi_heads"])
        return None, None
    hcfg = cfg["roi_heads"]
    if hcfg["name"] != "standard":
        raise ConfigError(
            f"model.mask_on needs model.roi_heads.name 'standard' (FPN or DC5 heads), got "
            f"{hcfg['name']!r}"
        )
    resolution = hcfg["mask_pooler_resolution"]
    if not isinstance(resolution, int) or resolution < 1:
        raise ConfigError(
            f"model.roi_heads.mask_pooler_resolution must be a positive integer, got {resolution!r}"
        )
    threshold = hcfg["mask_threshold"]
    if not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ConfigError(f"model.roi_heads.mask_threshold must be in (0, 1), got {threshold!r}")
    in_shapes = [shapes[f] for f in hcfg["in_features"]]
    pooler = MultiLevelRoIAlign(
        output_size=resolution,
        strides=[s.stride for s in in_shapes],
        sampling_ratio=hcfg["pooler_sampling_ratio"],
        aligned=hcfg["pooler_aligned"],
        canonical_box_size=hcfg["canonical_box_size"],
        canonical_level=hcfg["canonical_level"],
    )
    conv_dims = hcfg["mask_conv_dims"]
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in conv_dims):
        raise ConfigError(f"model.roi_heads.mask_conv_dims must be a list of positive widths "
                          f"(one per convolution; [] for none), got {list(conv_dims)}")
    head = MaskRCNNHead(
        in_channels=in_shapes[0].channels,
        num_classes=num_classes,
        conv_dims=list(conv_dims),
        loss_weight=hcfg["mask_loss_weight"],
        aligned=hcfg["pooler_aligned"],
    )
    return pooler, head


def build_roi_heads(
    cfg: Mapping[str, Any],
    shapes: Mapping[str, ShapeSpec],
    num_classes: int,
    res5: nn.Module | None,
) -> ROIHeads:
    """RoI heads from the ``model`` config.

    Args:
        cfg: the ``model`` config.
        shapes: the backbone's output shapes by name.
        num_classes: number K of foreground classes.
        res5: the res5 stage for a res5 head, else None.
    """
    hcfg = cfg["roi_heads"]
    _check_roi_heads_name(hcfg["name"])
    in_features = list(hcfg["in_features"])
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ConfigError(
            f"model.roi_heads.in_features {missing} are not backbone outputs {list(shapes)}"
        )
    in_shapes = [shapes[f] for f in in_features]
    for key, least, note in (("pooler_resolution", 1, ""),
                             ("pooler_sampling_ratio", 0,
                              " (0: adaptive, as many points as each RoI spans)")):
        value = hcfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"model.roi_heads.{key} must be an integer of {least} or more"
                              f"{note}, got {value!r}")
    pooler = MultiLevelRoIAlign(
        output_size=hcfg["pooler_resolution"],
        strides=[s.stride for s in in_shapes],
        sampling_ratio=hcfg["pooler_sampling_ratio"],
        aligned=hcfg["pooler_aligned"],
        canonical_box_size=hcfg["canonical_box_size"],
        canonical_level=hcfg["canonical_level"],
    )
    if hcfg["name"] == "res5":
        assert res5 is not None
        head_channels = res5[-1].out_channels
    else:
        box_head = FastRCNNFCHead(
            in_channels=in_shapes[0].channels,
            resolution=hcfg["pooler_resolution"],
            fc_dims=list(hcfg["fc_dims"]),
        )
        head_channels = box_head.out_channels
    predictor = FastRCNNOutputs(
        in_channels=head_channels,
        num_classes=num_classes,
        box_coder=BoxCoder(weights=hcfg["bbox_reg_weights"]),
        cls_agnostic_bbox_reg=hcfg["cls_agnostic_bbox_reg"],
        smooth_l1_beta=hcfg["smooth_l1_beta"],
        score_thresh=hcfg["score_thresh"],
        nms_thresh=hcfg["nms_thresh"],
        detections_per_image=hcfg["detections_per_image"],
        min_box_size=hcfg["min_box_size"],
        loss_weight=hcfg["loss_weight"],
    )
    common = dict(
        num_classes=num_classes,
        box_predictor=predictor,
        matcher=Matcher(
            low_threshold=hcfg["iou_threshold"],
            high_threshold=hcfg["iou_threshold"],
            allow_low_quality_matches=False,
        ),
        sampler=BalancedSampler(
            batch_size_per_image=hcfg["batch_size_per_image"],
            positive_fraction=hcfg["positive_fraction"],
        ),
        proposal_append_gt=hcfg["proposal_append_gt"],
    )
    mask_pooler, mask_head = build_mask_branch(cfg, shapes, num_classes)
    if hcfg["name"] == "res5":
        return Res5ROIHeads(in_features=in_features, box_pooler=pooler, res5=res5, **common)
    return StandardROIHeads(
        in_features=in_features,
        box_pooler=pooler,
        box_head=box_head,
        mask_pooler=mask_pooler,
        mask_head=mask_head,
        mask_rois_per_image=hcfg["mask_rois_per_image"],
        **common,
    )


MASK_KEYS = ("mask_pooler_resolution", "mask_conv_dims", "mask_loss_weight",
             "mask_rois_per_image", "mask_threshold")


def _warn_of_unused_mask_keys(hcfg: Mapping[str, Any]) -> None:
    """Mask keys set away from their defaults in a detector without masks (a Mask R-CNN
    meant, model.mask_on forgotten): said, as nothing reads them."""
    from .config import defaults
    default, given = _plain(defaults().model.roi_heads), _plain(hcfg)
    changed = [f"model.roi_heads.{key}" for key in MASK_KEYS if given[key] != default[key]]
    if not changed:
        return
    warn_once(logger, f"{', '.join(changed)} set, but model.mask_on is false: no mask head "
                      f"reads {'it' if len(changed) == 1 else 'them'} (a Mask R-CNN meant: "
                      f"model.mask_on=true; boxes alone from a Mask R-CNN config: nothing to "
                      f"do)")


def _check_top_block(top_block: str | None) -> None:
    if top_block not in (None, *TOP_BLOCKS):
        raise ConfigError(
            f"unknown model.fpn.top_block {top_block!r}; valid: {', '.join(TOP_BLOCKS)} or null"
        )


def _check_roi_heads_name(name: str) -> None:
    if name not in ROI_HEADS:
        raise ConfigError(f"unknown model.roi_heads.name {name!r}; valid: {', '.join(ROI_HEADS)}")


def build_model(cfg: Mapping[str, Any] | DictConfig,
                class_names: Sequence[str] | None = None,
                category_ids: Sequence[int] | None = None) -> GeneralizedRCNN:
    """Faster R-CNN (Mask R-CNN with ``model.mask_on``) from a full config (its ``model`` subtree).

    ``model.backbone.weights`` loads backbone weights while building the backbone;
    ``model.weights`` (whole-detector weights: own checkpoint or torchvision state dict)
    is loaded last, strictly but for the predictors when the weights were trained on another
    class count (those start afresh: fine-tuning).

    Args:
        cfg: config with a ``model`` subtree as in ``configs/detection/base_faster_rcnn.yaml``.
        class_names: the classes trained on (fine-tuning `model.weights`): see
            `backbones.model_weights.load_whole_model_weights`.
        category_ids: their COCO category ids: torchvision's COCO weights keep the class rows
            of those ids (`convert.coco_rows_of_torchvision_weights`).
    """
    mcfg = _plain(cfg["model"])
    if mcfg.get("arch", "faster_rcnn") != "faster_rcnn":
        raise ConfigError(f"build_model builds model.arch 'faster_rcnn', got {mcfg.get('arch')!r}")
    num_classes = mcfg.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"model.num_classes must be a positive integer (set it, or let the training "
            f"script read it from the training JSON), got {num_classes!r}"
        )
    # 0 trained on the ground-truth boxes alone, or scored nothing (AP 0), without a word
    check_counts(mcfg["rpn"], ("pre_nms_topk_train", "pre_nms_topk_test", "post_nms_topk_train",
                               "post_nms_topk_test"), "model.rpn.")
    check_counts(mcfg["roi_heads"], ("detections_per_image",), "model.roi_heads.")
    check_counts(mcfg["roi_heads"], ("canonical_box_size", "canonical_level"), "model.roi_heads.")
    check_non_negative(mcfg["rpn"], ("loss_weight", "smooth_l1_beta", "min_box_size"),
                       "model.rpn.")
    check_non_negative(mcfg["roi_heads"], ("loss_weight", "smooth_l1_beta", "mask_loss_weight",
                                           "min_box_size"), "model.roi_heads.")
    # an NMS overlap above 1 suppresses nothing, a score threshold above 1 keeps nothing
    for section in ("rpn", "roi_heads"):
        for key, kind in (("nms_thresh", "an overlap (IoU)"), ("score_thresh", "a score")):
            check_probability(mcfg[section][key], f"model.{section}.{key}", kind)
    with config_section("model.backbone / model.fpn"):
        backbone, res5 = build_backbone(mcfg)
    shapes = backbone.output_shape()
    with config_section("model.rpn / model.anchor_generator"):
        rpn = build_rpn(mcfg, shapes)
    with config_section("model.roi_heads"):
        roi_heads = build_roi_heads(mcfg, shapes, num_classes, res5)
    with config_section("model"):
        model = GeneralizedRCNN(
            backbone=backbone,
            rpn=rpn,
            roi_heads=roi_heads,
            pixel_mean=mcfg["pixel_mean"],
            pixel_std=mcfg["pixel_std"],
            size_divisibility=int(getattr(backbone, "size_divisibility", 32)),
            mask_threshold=mcfg["roi_heads"]["mask_threshold"],
        )
    if mcfg.get("weights"):
        weights = mcfg["weights"]
        if category_ids is not None and class_names is not None:
            weights = coco_rows_of_torchvision_weights(weights, category_ids, class_names)
        load_detector_weights(model, weights, weight_bound_settings(mcfg), new_classes=True,
                              class_names=class_names, source=str(mcfg["weights"]),
                              model_config=mcfg)
    return model
