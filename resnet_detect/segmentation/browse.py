"""A segmentation split's samples as the model receives them (tools/browse_dataset.py): the
training split's augmented crops (padding shown as ignored), the validation split's whole
images, with the class-id map drawn over each and its legend beside it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig

from resnet_detect.engine.visualize import draw_segmentation

from .data import SemSegDataset, build_dataset, overlay_colours


def browse_split(cfg: DictConfig, split: str
                 ) -> tuple[SemSegDataset, Callable[[dict[str, Any]], np.ndarray]]:
    """(the split's dataset, sample -> RGB picture of its class-id map, ignored pixels grey).

    Raises:
        ValueError: `split` is not "train" or "val", or the config does not set it.
    """
    if split not in ("train", "val"):
        raise ValueError(f"a sem_seg config has the splits train and val, not {split!r}")
    dataset = build_dataset(cfg, split)
    colours = overlay_colours(cfg.data.palette, dataset.num_classes)

    def draw(sample: dict[str, Any]) -> np.ndarray:
        return draw_segmentation(sample["image"].permute(1, 2, 0).numpy(),
                                 sample["gt_sem_seg"].numpy(), dataset.class_names, colours,
                                 ignore_index=dataset.ignore_index, legend_beside=True)
    return dataset, draw
