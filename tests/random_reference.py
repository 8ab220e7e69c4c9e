"""Random weights for torchvision's R-CNN models that still give varied detections.

No pretrained weights can be downloaded here, so the parity tests and the speed benchmark
compare our models with torchvision's on these: BatchNorm statistics and RPN / RoI head
weights drawn from a generator, and the classifier's share of the common feature direction
removed (random box-head features are all positive with a large common component; without
this one class wins every RoI).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

PROBE_SIZE = (320, 416)  # (H, W) of the image `spread_classes` estimates the mean feature on


@torch.no_grad()
def randomize_detector(tv: nn.Module, gen: torch.Generator) -> None:
    """BatchNorm affine and running statistics, RPN and RoI-head weights from `gen`."""
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
    for name, p in tv.named_parameters():
        if name.startswith(("rpn.", "roi_heads.")):
            std = 0.02 if name.endswith("weight") else (0.1 if name.startswith("rpn.") else 0.0)
            p.copy_(torch.randn(p.shape, generator=gen) * std)


@torch.no_grad()
def spread_classes(tv: nn.Module, probe: Tensor, gen: torch.Generator) -> None:
    """Remove from the box classifier the mean box feature of 300 random RoIs on `probe`.

    Args:
        tv: a torchvision Faster/Mask R-CNN in eval mode.
        probe: (3, *PROBE_SIZE) float image in [0, 1].
        gen: draws the RoIs.
    """
    if tuple(probe.shape) != (3, *PROBE_SIZE):
        raise ValueError(f"probe must be (3, {PROBE_SIZE[0]}, {PROBE_SIZE[1]}), "
                         f"got {tuple(probe.shape)}")
    features = tv.backbone(tv.transform.normalize(probe)[None])
    xy = torch.rand(300, 2, generator=gen) * torch.tensor([350.0, 250.0])
    rois = torch.cat([xy, xy + torch.rand(300, 2, generator=gen) * 150 + 10], dim=1)
    mean = tv.roi_heads.box_head(tv.roi_heads.box_roi_pool(features, [rois], [PROBE_SIZE])).mean(0)
    weight = tv.roi_heads.box_predictor.cls_score.weight
    weight -= (weight @ mean)[:, None] * mean[None, :] / (mean @ mean)
