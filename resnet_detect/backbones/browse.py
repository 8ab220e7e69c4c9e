"""A classification split's samples as the model receives them (tools/browse_dataset.py):
the training split's augmented crops (random resized crop, flip), the validation split's
resized centre crops, each enlarged by a whole factor (every pixel a square) above a caption
of its class name; the classes take turns (the first N drawn are of N classes)."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig

from resnet_detect.engine.visualize import drawable_name, put_text, text_size

from .data import ImageFolderDataset

MIN_SIDE = 192  # crops smaller than this are enlarged (48 px crops are unreadable as they are)
CAPTION = 20  # the caption's height


class ClassesInTurn:
    """`dataset`'s images in the order: each class's first image, then each one's second, ...
    (sorted by class, the first 20 of ImageNet were all tench)."""

    def __init__(self, dataset: ImageFolderDataset) -> None:
        self.dataset = dataset
        seen: dict[int, int] = {}
        turns = []
        for i in range(len(dataset)):
            label = dataset.samples[i][1]
            seen[label] = seen.get(label, -1) + 1
            turns.append((seen[label], label, i))
        self.order = [i for _, _, i in sorted(turns)]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | None:
        return self.dataset[self.order[key[0]], key[1]]

    def record(self, index: int) -> dict[str, Any]:
        return self.dataset.record(self.order[index])


def browse_split(cfg: DictConfig, split: str
                 ) -> tuple[ClassesInTurn, Callable[[dict[str, Any]], np.ndarray]]:
    """(the split's dataset, sample -> RGB picture of its crop and class name).

    Raises:
        ValueError: `split` is not "train" or "val".
    """
    from .pretraining import build_datasets  # (a cycle at import: pretraining has this)
    if split not in ("train", "val"):
        raise ValueError(f"a classification config has the splits train and val, not "
                         f"{split!r}")
    train, val = build_datasets(cfg)
    dataset = ClassesInTurn(train if split == "train" else val)

    def draw(sample: dict[str, Any]) -> np.ndarray:
        crop = sample["image"].permute(1, 2, 0).numpy()
        factor = max(1, math.ceil(MIN_SIDE / max(crop.shape[:2])))
        crop = crop.repeat(factor, axis=0).repeat(factor, axis=1)
        label = int(sample["label"])
        name, font = drawable_name(dataset.dataset.class_names[label], label)
        width = max(crop.shape[1], text_size(name, font)[0] + 8)
        picture = np.zeros((crop.shape[0] + CAPTION, width, 3), dtype=np.uint8)
        picture[:crop.shape[0], :crop.shape[1]] = crop
        put_text(picture, name, (4, crop.shape[0] + CAPTION - 5), (255, 255, 255), font)
        return picture
    return dataset, draw
