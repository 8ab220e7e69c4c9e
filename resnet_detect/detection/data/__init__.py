"""The detection mapper: COCO records -> decoded, augmented samples with boxes (and masks),
and the configured splits built from them. COCO reading, images, samplers and loaders come
from the shared data layer (engine.data)."""
from .dataset import DetectionDataset
from .splits import Datasets, build_datasets, build_train_dataset, build_val_dataset
from .transforms import ResizeShortestEdge, build_transforms, resized_shape

__all__ = ["Datasets", "DetectionDataset", "ResizeShortestEdge", "build_datasets",
           "build_train_dataset", "build_transforms", "build_val_dataset", "resized_shape"]
