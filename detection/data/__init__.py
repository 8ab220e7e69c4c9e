"""The detection mapper: COCO records -> decoded, augmented samples with boxes (and masks).
COCO reading, images, samplers and loaders come from the shared data layer (engine.data)."""
from .dataset import DetectionDataset
from .transforms import ResizeShortestEdge, build_transforms, resized_shape

__all__ = ["DetectionDataset", "ResizeShortestEdge", "build_transforms", "resized_shape"]
