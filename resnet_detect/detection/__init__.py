"""Faster R-CNN (FPN, C4, DC5) and Mask R-CNN on ResNet backbones, on torchvision.ops kernels."""

from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .build import build_model
from .config import load_config
from .convert import convert_torchvision_faster_rcnn, load_detector_weights
from .fpn import FPN, LastLevelMaxPool
from .matcher import Matcher
from .poolers import MultiLevelRoIAlign
from .predictor import Predictor
from .rcnn import GeneralizedRCNN
from .roi_heads import (
    FastRCNNFCHead,
    FastRCNNOutputs,
    MaskRCNNHead,
    Res5ROIHeads,
    ROIHeads,
    StandardROIHeads,
    paste_masks,
)
from .rpn import RPN, RPNHead
from .sampler import BalancedSampler

__all__ = [
    "AnchorGenerator",
    "BalancedSampler",
    "BoxCoder",
    "FPN",
    "FastRCNNFCHead",
    "FastRCNNOutputs",
    "GeneralizedRCNN",
    "LastLevelMaxPool",
    "MaskRCNNHead",
    "Matcher",
    "MultiLevelRoIAlign",
    "Predictor",
    "load_config",
    "RPN",
    "RPNHead",
    "ROIHeads",
    "Res5ROIHeads",
    "StandardROIHeads",
    "build_model",
    "convert_torchvision_faster_rcnn",
    "load_detector_weights",
    "paste_masks",
]
