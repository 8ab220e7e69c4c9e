"""Parameters and multiply-adds of a Faster / Mask R-CNN, by part, for one image.

Counted on a copy on the meta device (shapes only, nothing computed or allocated at any
size). The RoI heads cost the same per RoI at any image size and are counted on as many RoIs
as the model lets through at most: the RPN's test-time post-NMS proposals (fewer where the
input has fewer anchors) for the box head, the detections kept per image for the mask head
(detectron2's analyze_model counts what some real images happen to give).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from resnet_detect.backbones.complexity import count_parameters, run_counting
from resnet_detect.engine.trainer import eval_mode

from .rcnn import GeneralizedRCNN


def count_detector(model: GeneralizedRCNN, size: tuple[int, int]) -> list[tuple[str, int, int]]:
    """(part, parameters, multiply-adds) rows for one image of `size` (H, W), padded as the
    model pads it; the parts' parameters add up to the model's."""
    meta = copy.deepcopy(model).to("meta")
    heads = meta.roi_heads
    for name in ("box_pooler", "mask_pooler"):
        if getattr(heads, name, None) is not None:
            setattr(heads, name, _PooledShape(getattr(heads, name).output_size))
    with eval_mode(meta):
        batch = torch.zeros(1, 3, *padded(size, meta.size_divisibility), device="meta")
        features, backbone = run_counting(meta.backbone, batch)
        (logits, _), rpn = run_counting(meta.rpn.head,
                                        [features[f] for f in meta.rpn.in_features])
        # no more than the anchors kept before the NMS (a small input has few)
        proposals = min(meta.rpn.post_nms_topk[1],
                        sum(min(meta.rpn.pre_nms_topk[1], level.numel()) for level in logits))
        boxes = torch.zeros(proposals, 4, device="meta")
        box_features, box_head = run_counting(heads.box_features, features, [boxes])
        _, predictor = run_counting(heads.box_predictor, box_features)
        mask_head = getattr(heads, "mask_head", None)
        if mask_head is not None:
            detections = min(heads.box_predictor.detections_per_image,
                             proposals * heads.num_classes)
            classes = torch.zeros(detections, dtype=torch.int64, device="meta")
            _, mask = run_counting(heads.mask_logits, features, [boxes[:detections]], classes)

    bottom_up = getattr(model.backbone, "bottom_up", None)
    if bottom_up is None:
        rows = [("backbone", count_parameters(model.backbone), backbone[""])]
    else:
        rows = [("backbone", count_parameters(bottom_up), backbone["bottom_up"]),
                ("fpn", count_parameters(model.backbone) - count_parameters(bottom_up),
                 backbone[""] - backbone["bottom_up"])]
    rows.append(("rpn", count_parameters(model.rpn), rpn[""]))
    mask_params = count_parameters(model.roi_heads.mask_head) if mask_head is not None else 0
    rows.append((f"roi_heads ({proposals} RoIs)", count_parameters(model.roi_heads) - mask_params,
                 box_head[""] + predictor[""]))
    if mask_head is not None:
        rows.append((f"mask_head ({detections} RoIs)", mask_params, mask[""]))
    return rows


def padded(size: tuple[int, int], divisibility: int) -> tuple[int, int]:
    """(H, W) rounded up to a multiple of `divisibility` (0 or 1: as they are)."""
    if divisibility <= 1:
        return size
    return tuple(-(-side // divisibility) * divisibility for side in size)


class _PooledShape(nn.Module):
    """A RoI pooler's output shape, for the meta device: RoIAlign is not counted, and which
    level pools a box depends on its coordinates, which meta tensors lack."""

    def __init__(self, output_size: tuple[int, int]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        count = sum(len(b) for b in boxes)
        return features[0].new_zeros(count, features[0].shape[1], *self.output_size)
