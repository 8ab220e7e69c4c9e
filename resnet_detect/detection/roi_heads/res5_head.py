"""C4 RoI head: RoIAlign on res4 (R, C4, 14, 14) -> res5 stage -> average pool (R, C5).

The "C4" Faster R-CNN of the ResNet paper: the backbone stops at res4 (stride 16), the
RPN and the RoI pooling use res4, and the res5 stage (first block stride 2) runs per RoI
as the box head before the Fast R-CNN outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from resnet_detect.engine.config import ArgumentError
from ..poolers import MultiLevelRoIAlign
from .base import ROIHeads


class Res5ROIHeads(ROIHeads):
    """RoI pooling on one level, res5 as the head, then Fast R-CNN outputs.

    Args:
        in_features: the single feature map pooled from (e.g. ("res4",)).
        box_pooler: single-level RoIAlign (resolution 14 in the standard recipe).
        res5: the res5 stage, (R, C4, S, S) -> (R, C5, S/2, S/2).
        **kwargs: ``ROIHeads`` arguments (num_classes, box_predictor on C5 features, matcher,
            sampler, proposal_append_gt).
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        box_pooler: MultiLevelRoIAlign,
        res5: nn.Module,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(in_features) != 1:
            raise ArgumentError(f"Res5ROIHeads pools from one feature map, got {list(in_features)}")
        self.in_features = list(in_features)
        self.box_pooler = box_pooler
        self.res5 = res5

    def box_features(self, features: dict[str, Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Per image (R_i, 4) boxes -> (R, C5) pooled res5 features.

        Args:
            features: feature maps by name.
            boxes: per image (R_i, 4) RoIs.
        """
        pooled = self.box_pooler([features[f] for f in self.in_features], boxes)  # (R, C4, S, S)
        return self.res5(pooled).mean(dim=(2, 3))  # (R, C5, S/2, S/2) -> (R, C5)
