"""COCO detection data: loading and validation, decoding, augmentation, batching."""
from .coco import (
    CategoryMapping,
    DatasetError,
    LoadStats,
    check_segmentation,
    load_coco_json,
    read_coco_json,
)
from .dataset import DetectionDataset, collate, segmentation_to_mask
from .image_io import UnreadableImageError, read_image
from .samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    TrainingSampler,
    build_test_loader,
    build_train_loader,
)
from .transforms import ResizeShortestEdge, build_transforms, resized_shape

__all__ = [
    "CategoryMapping", "DatasetError", "DetectionDataset", "GroupedBatchSampler",
    "InferenceSampler", "LoadStats", "ResizeShortestEdge", "TrainingSampler",
    "UnreadableImageError", "build_test_loader", "build_train_loader", "build_transforms",
    "check_segmentation", "collate", "load_coco_json", "read_coco_json", "read_image",
    "resized_shape", "segmentation_to_mask",
]
