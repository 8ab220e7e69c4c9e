"""RoI heads: box head, Fast R-CNN outputs, mask head, standard (FPN/DC5) and res5 (C4) heads."""

from .box_head import FastRCNNFCHead
from .fast_rcnn import FastRCNNOutputs
from .mask_head import MaskRCNNHead
from .mask_paste import paste_masks
from .res5_head import Res5ROIHeads
from .base import ROIHeads, SampledRoIs
from .standard import StandardROIHeads

__all__ = [
    "FastRCNNFCHead",
    "FastRCNNOutputs",
    "MaskRCNNHead",
    "ROIHeads",
    "Res5ROIHeads",
    "SampledRoIs",
    "StandardROIHeads",
    "paste_masks",
]
