"""The classes (and colours) of the public segmentation datasets, named instead of typed:
`data.class_names: cityscapes` (or ade20k, voc) and `data.palette: cityscapes`, as
mmsegmentation's CityscapesDataset, ADE20KDataset and PascalVOCDataset carry them.

Class k is the mask value k as each dataset's usual masks hold it: Cityscapes' labelTrainIds
(0..18, 255 ignored), ADE20K's annotations read with data.reduce_zero_label (1..150 become
0..149), VOC's SegmentationClass (0 background, 1..20, 255 the objects' borders).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CITYSCAPES = {  # name: colour, cityscapesscripts' labels.py (trainId order)
    "road": (128, 64, 128), "sidewalk": (244, 35, 232), "building": (70, 70, 70),
    "wall": (102, 102, 156), "fence": (190, 153, 153), "pole": (153, 153, 153),
    "traffic light": (250, 170, 30), "traffic sign": (220, 220, 0),
    "vegetation": (107, 142, 35), "terrain": (152, 251, 152), "sky": (70, 130, 180),
    "person": (220, 20, 60), "rider": (255, 0, 0), "car": (0, 0, 142), "truck": (0, 0, 70),
    "bus": (0, 60, 100), "train": (0, 80, 100), "motorcycle": (0, 0, 230),
    "bicycle": (119, 11, 32)}

ADE20K = (  # SceneParsing's objectInfo150, the first of each entry's names
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")

VOC = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
       "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
       "sheep", "sofa", "train", "tvmonitor")


def voc_colours(count: int) -> np.ndarray:
    """(count, 3) uint8: the VOC devkit's colour map (class k's bits spread over the high
    bits of r, g and b), the colours of VOC's SegmentationClass PNGs."""
    out = np.zeros((count, 3), dtype=np.uint8)
    for k in range(count):
        value = k
        for shift in range(7, -1, -1):
            for channel in range(3):
                out[k, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
    return out


CLASS_NAMES = {"cityscapes": tuple(CITYSCAPES), "ade20k": ADE20K, "voc": VOC}


def named_dataset(value: Any) -> str | None:
    """The dataset (a key of CLASS_NAMES) that data.class_names or data.palette `value` names
    (cityscapes, ade20k, voc; any case); None for anything else, and where a file of that
    name is there (it is read, as before)."""
    if not isinstance(value, str) or value.strip().lower() not in CLASS_NAMES:
        return None
    return None if Path(value).is_file() else value.strip().lower()


def known_palette(name: str) -> np.ndarray | None:
    """(K, 3) uint8 colours of the dataset `name` (named_dataset's): Cityscapes' own, VOC's
    colour map; None for the others (ADE20K's overlays take the automatic colours)."""
    if name == "cityscapes":
        return np.asarray(list(CITYSCAPES.values()), dtype=np.uint8)
    if name == "voc":
        return voc_colours(len(VOC))
    return None
