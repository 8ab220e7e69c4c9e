"""Overlaps of boxes on the host (numpy), for the scorers that match detections to objects
(VOC's AP, the confusion matrix)."""
from __future__ import annotations

import numpy as np


def box_overlaps(a: np.ndarray, b: np.ndarray, *, over_a: bool = False) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes, or with `over_a` the intersection over a's area
    (COCO's test of a detection against a crowd region)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)[:, None]
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)[None, :]
    union = area_a if over_a else area_a + area_b - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)
