"""A detection split's samples as the model receives them (tools/browse_dataset.py): the
training split augmented as in training, the validation split at its test size, with each
object's box, class name and (Mask R-CNN) mask drawn."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig

from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.visualize import draw_detections, palette

from .data import DetectionDataset, build_train_dataset, build_val_dataset
from .data.polygons import PolygonMasks


def browse_split(cfg: DictConfig, split: str
                 ) -> tuple[DetectionDataset, Callable[[dict[str, Any]], np.ndarray]]:
    """(the split's dataset, sample -> RGB picture of its objects).

    Raises:
        ValueError: `split` is not "train" or "val", or the config does not set it.
    """
    if split == "train":
        dataset, mapping, _ = build_train_dataset(cfg)
    elif split == "val":
        val = build_val_dataset(cfg, with_masks=True)
        if val is None:
            raise ConfigError("data.val.ann_file and data.val.img_dir are not set")
        dataset, mapping = val.dataset, val.mapping
    else:
        raise ValueError(f"a detection config has the splits train and val, not {split!r}")
    colours = {i: tuple(int(v) for v in rgb) for i, rgb in enumerate(palette(mapping.num_classes))}

    def draw(sample: dict[str, Any]) -> np.ndarray:
        labels = sample["gt_classes"].numpy()
        objects = {"boxes": sample["gt_boxes"].numpy(), "labels": labels,
                   "class_names": [mapping.names[k] for k in labels],
                   "category_ids": [mapping.dataset_ids[k] for k in labels]}
        if "gt_masks" in sample:
            masks = sample["gt_masks"]
            objects["masks"] = (masks.bitmasks(*sample["image"].shape[1:]) if isinstance(
                masks, PolygonMasks) else masks.numpy()).astype(bool)
        return draw_detections(sample["image"].permute(1, 2, 0).numpy(), objects, colours,
                               min_score=0.0)
    return dataset, draw
