"""Mask R-CNN targets from polygons (`data.train.mask_format: polygon`, detectron2's
INPUT.MASK_FORMAT): a training sample carries its objects' polygons, moved with the image,
instead of one full-size bitmap per object, and each positive RoI's target is its object's
polygons rasterised inside the RoI at the mask head's size, as detectron2 makes them.

A dense image's bitmaps take gigabytes (1000 objects at 800 x 800: 655 MB a sample, moved
through the loader, then made float for RoIAlign); its polygons take kilobytes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .transforms import CROP, RESIZES


class PolygonMasks:
    """The polygons of M objects: per object a list of flat (x0, y0, x1, y1, ...) float64
    arrays in image pixels (each at least 3 points)."""

    def __init__(self, objects: Sequence[Sequence[np.ndarray]]) -> None:
        self.objects = [[np.asarray(p, dtype=np.float64) for p in polygons]
                        for polygons in objects]

    def __len__(self) -> int:
        return len(self.objects)

    def moved(self, applied: Sequence[tuple[str, dict[str, Any]]], height: int,
              width: int) -> PolygonMasks:
        """The polygons after the resizes ("ResizeShortestEdge", "ResizeScale":
        params["new_shape"]), horizontal flips ("HorizontalFlip") and crops
        ("RandomCropAtMost": params["crop_coords"]) applied to their H x W image, in that
        order (parts cut off by a crop lie outside the image: each RoI's target is
        rasterised within its box, which the crop cut)."""
        objects = [[p.copy() for p in polygons] for polygons in self.objects]
        for name, params in applied:
            for polygon in (p for polygons in objects for p in polygons):
                if name in RESIZES:
                    new_h, new_w = params["new_shape"]
                    polygon[0::2] *= new_w / width
                    polygon[1::2] *= new_h / height
                elif name == CROP:
                    polygon[0::2] -= params["crop_coords"][0]
                    polygon[1::2] -= params["crop_coords"][1]
                else:  # mirrored: pixel column i becomes width - 1 - i, coordinate x width - x
                    polygon[0::2] = width - polygon[0::2]
            if name in RESIZES:
                height, width = params["new_shape"]
            elif name == CROP:
                x0, y0, x1, y1 = params["crop_coords"]
                height, width = y1 - y0, x1 - x0
        return PolygonMasks(objects)

    def rasterize_within(self, boxes: np.ndarray, objects: np.ndarray, size: int) -> np.ndarray:
        """float32 (P, size, size) 0/1 targets: object objects[k]'s polygons, shifted to
        boxes[k]'s (x0, y0) and scaled by size over its width and height, rasterised (as
        detectron2's rasterize_polygons_within_box): where the object lies in its box, for an
        aligned RoIAlign or not. (The bitmask targets of an unaligned RoIAlign, torchvision's,
        lie there too where the resize's factor is not a whole number, as COCO's, its half
        pixel taking back the RoIAlign's; at a factor of 1 or 2 they lie half a pixel up and
        left.)"""
        out = np.zeros((len(boxes), size, size), dtype=np.float32)
        for target, (x0, y0, x1, y1), k in zip(out, boxes.astype(np.float64), objects):
            scale_x, scale_y = size / max(x1 - x0, 0.1), size / max(y1 - y0, 0.1)
            inside = []
            for polygon in self.objects[int(k)]:
                shifted = polygon.copy()
                shifted[0::2] = (shifted[0::2] - x0) * scale_x
                shifted[1::2] = (shifted[1::2] - y0) * scale_y
                inside.append(shifted.tolist())
            if inside:
                target[...] = mask_utils.decode(
                    mask_utils.merge(mask_utils.frPyObjects(inside, size, size)))
        return out

    def bitmasks(self, height: int, width: int) -> np.ndarray:
        """uint8 (M, H, W): each object's polygons rasterised in its image (for pictures)."""
        out = np.zeros((len(self), height, width), dtype=np.uint8)
        for mask, polygons in zip(out, self.objects):
            if polygons:
                mask[...] = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
                    [p.tolist() for p in polygons], height, width)))
        return out
