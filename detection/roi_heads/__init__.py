"""RoI heads: box head, Fast R-CNN outputs, standard (FPN/DC5) and res5 (C4) heads."""

from .box_head import FastRCNNFCHead
from .fast_rcnn import FastRCNNOutputs
from .res5_head import Res5ROIHeads
from .standard import ROIHeads, SampledRoIs, StandardROIHeads

__all__ = [
    "FastRCNNFCHead",
    "FastRCNNOutputs",
    "ROIHeads",
    "Res5ROIHeads",
    "SampledRoIs",
    "StandardROIHeads",
]
