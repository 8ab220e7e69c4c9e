"""RoIAlign over one or several feature levels: R boxes -> (R, C, S, S) features.

Boxes of all images come as a list (one (R_i, 4) xyxy tensor per image, in padded-image
pixels). With several levels each box is pooled from the level chosen by the FPN paper's
rule ``k = floor(k0 + log2(sqrt(area) / 224))`` clamped to the levels present, computed
the way torchvision's ``LevelMapper`` does (eps 1e-6 after the log) so that the same
boxes land on the same levels. The kernel is ``torchvision.ops.roi_align`` (with a faster CPU
backward, resnet_detect/detection/roi_align.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from resnet_detect.engine.config import ArgumentError
from .roi_align import multilevel_roi_align, roi_align
from .tracing import true_indices


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Concatenates per-image boxes into (R, 5) rois ``(batch_index, x1, y1, x2, y2)``.

    Args:
        boxes: one (R_i, 4) tensor per image.
    """
    concat = torch.cat(list(boxes), dim=0)
    batch_idx = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([batch_idx, concat], dim=1)


class MultiLevelRoIAlign(nn.Module):
    """Pools a fixed-size feature for every box from the level matching its size.

    Args:
        output_size: side S of the pooled feature.
        strides: stride of each input level, finest first (powers of two, consecutive
            levels a factor 2 apart, e.g. (4, 8, 16, 32)).
        sampling_ratio: bilinear samples per bin side (0 = adaptive).
        aligned: shift boxes by -0.5 pixel (detectron2's ROIAlignV2); torchvision's
            Faster R-CNN uses False.
        canonical_box_size: box size (sqrt of area) mapped to ``canonical_level``.
        canonical_level: level (log2 of the stride) for boxes of the canonical size.
    """

    def __init__(
        self,
        *,
        output_size: int,
        strides: Sequence[int],
        sampling_ratio: int = 2,
        aligned: bool = False,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        strides = [int(s) for s in strides]
        levels = [math.log2(s) for s in strides]
        if not strides or any(lvl != round(lvl) for lvl in levels):
            raise ArgumentError(f"RoI pooler strides must be powers of two, got {strides}")
        if any(b - a != 1 for a, b in zip(levels, levels[1:])):
            raise ArgumentError(
                f"RoI pooler strides must double from level to level, got {strides}")
        if output_size <= 0 or sampling_ratio < 0:
            raise ArgumentError(
                f"bad RoI pooler output_size={output_size} / sampling_ratio={sampling_ratio}"
            )
        self.output_size = (int(output_size), int(output_size))
        self.strides = strides
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.min_level = int(levels[0])
        self.max_level = int(levels[-1])
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def assign_levels(self, boxes: Sequence[Tensor]) -> Tensor:
        """Index (0 = finest input level) of the level each box is pooled from.

        Args:
            boxes: one (R_i, 4) tensor per image.

        Returns:
            (R,) int64 level indices.
        """
        concat = torch.cat(list(boxes), dim=0)
        box_size = torch.sqrt((concat[:, 2] - concat[:, 0]) * (concat[:, 3] - concat[:, 1]))
        eps = torch.tensor(1e-6, dtype=box_size.dtype, device=box_size.device)
        level = torch.floor(
            self.canonical_level + torch.log2(box_size / self.canonical_box_size) + eps
        )
        level = torch.clamp(level, min=self.min_level, max=self.max_level)
        return level.to(torch.int64) - self.min_level

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Pools the features of every box.

        Args:
            features: one (N, C, H_l, W_l) map per stride in ``strides``.
            boxes: one (R_i, 4) xyxy tensor per image, padded-image pixels.

        Returns:
            (R, C, S, S) pooled features, boxes in the order given.
        """
        if len(features) != len(self.strides):
            raise ValueError(
                f"RoI pooler expects {len(self.strides)} feature maps, got {len(features)}"
            )
        # rois keep the boxes' dtype (float32 under AMP too); roi_align's autocast casts them
        rois = boxes_to_rois(boxes)
        if len(features) == 1:
            return roi_align(
                features[0],
                rois,
                self.output_size,
                self.scales[0],
                self.sampling_ratio,
                self.aligned,
            )

        levels = self.assign_levels(boxes)
        level_rows = true_indices(
            levels == torch.arange(len(features), device=levels.device)[:, None])
        return multilevel_roi_align(features, rois, level_rows, self.output_size, self.scales,
                                    self.sampling_ratio, self.aligned)
