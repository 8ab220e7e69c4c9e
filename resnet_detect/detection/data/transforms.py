"""Albumentations transforms for detection: shortest-edge resize with a max size, flip.

Boxes travel as albumentations `pascal_voc` (x1, y1, x2, y2 in pixels, edges of the pixel grid),
so a horizontal flip maps x to W - x and a resize scales by new_size / old_size per axis.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
from albumentations.core.type_definitions import Targets


def resized_shape(height: int, width: int, short_edge: int,
                  max_size: int | None) -> tuple[int, int]:
    """Output (H, W) of a shortest-edge resize, with detectron2's ResizeShortestEdge arithmetic.

    The short side becomes `short_edge`; if the long side would then exceed `max_size`, the
    scale is reduced so that it equals `max_size`. Sides are rounded half up, to 1 px at
    least (a panorama's short side would round to 0, which OpenCV refuses).

    Args:
        height: input height.
        width: input width.
        short_edge: target length of the shorter side.
        max_size: cap on the longer side (None or 0: no cap).
    """
    scale = short_edge / min(height, width)
    if height < width:
        new_h, new_w = float(short_edge), scale * width
    else:
        new_h, new_w = scale * height, float(short_edge)
    if max_size and max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


class ResizeShortestEdge(A.DualTransform):
    """Resize so the shorter side is one of `short_edge_length` and the longer <= `max_size`.

    Args:
        short_edge_length: one length, or the lengths to sample from.
        max_size: cap on the longer side (None or 0: no cap).
        sample_style: "choice" picks one of the lengths; "range" draws an integer in
            [min, max] of the two given lengths.
        interpolation: OpenCV interpolation for images (masks use nearest).
        p: probability of applying.
    """

    _targets = (Targets.IMAGE, Targets.MASK, Targets.BBOXES, Targets.KEYPOINTS)

    def __init__(self, short_edge_length: int | Sequence[int], max_size: int | None = None,
                 sample_style: Literal["choice", "range"] = "choice",
                 interpolation: int = cv2.INTER_LINEAR, p: float = 1.0) -> None:
        super().__init__(p=p)
        lengths = ((int(short_edge_length),) if isinstance(short_edge_length, (int, np.integer))
                   else tuple(int(v) for v in short_edge_length))
        if not lengths or min(lengths) <= 0:
            raise ValueError(f"short_edge_length must be positive, got {short_edge_length!r}")
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got {sample_style!r}")
        if sample_style == "range" and len(lengths) != 2:
            raise ValueError(f"sample_style='range' needs two lengths (min, max), got {lengths}")
        self.short_edge_length = lengths
        self.max_size = max_size
        self.sample_style = sample_style
        self.interpolation = interpolation

    def draw_short_edge(self, rng: random.Random) -> int:
        """One short-edge length, drawn as this transform draws it for an image."""
        if self.sample_style == "range":
            return rng.randint(min(self.short_edge_length), max(self.short_edge_length))
        return rng.choice(self.short_edge_length)

    def get_params_dependent_on_data(self, params: dict[str, Any],
                                     data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        short = data.get("short_edge")  # given: the batch's length (scale_per_batch)
        if short is None:
            short = self.draw_short_edge(self.py_random)
        elif not isinstance(short, (int, np.integer)) or short <= 0:
            raise ValueError(f"short_edge must be a positive integer, got {short!r}")
        new_h, new_w = resized_shape(height, width, int(short), self.max_size)
        return {"new_shape": (new_h, new_w), "scale_xy": (new_w / width, new_h / height)}

    def apply(self, img: np.ndarray, new_shape: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(img, (new_shape[1], new_shape[0]), interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, new_shape: tuple[int, int],
                      **params: Any) -> np.ndarray:
        return cv2.resize(mask, (new_shape[1], new_shape[0]), interpolation=cv2.INTER_NEAREST)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes  # albumentations keeps boxes normalized to [0, 1]: resizing leaves them

    def apply_to_keypoints(self, keypoints: np.ndarray, scale_xy: tuple[float, float],
                           **params: Any) -> np.ndarray:
        out = keypoints.copy()
        out[:, 0] *= scale_xy[0]
        out[:, 1] *= scale_xy[1]
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("short_edge_length", "max_size", "sample_style", "interpolation")


def build_transforms(*, min_size: int | Sequence[int] | None, max_size: int | None,
                     sample_style: Literal["choice", "range"] = "choice",
                     flip_prob: float = 0.0, with_boxes: bool = True) -> A.Compose:
    """The detection pipeline: shortest-edge resize, then an optional horizontal flip.

    Call it as `t(image=img, bboxes=boxes_xyxy, box_ids=ids)`; `box_ids` tells which input
    boxes survive (transforms that crop may drop some), `applied_transforms` what was done
    (for `dataset.object_masks`); `short_edge=L` resizes to L instead of drawing a length.
    With `with_boxes=False` (inference on bare images) call it as `t(image=img)`.

    Args:
        min_size: short-edge length(s), e.g. (640, 672, 704, 736, 768, 800) for training;
            None keeps each image's size (test-time augmentation resizes it for each view).
        max_size: cap on the longer side, e.g. 1333.
        sample_style: how `min_size` is sampled ("choice" or "range").
        flip_prob: probability of a horizontal flip (0.5 for training, 0 for testing).
        with_boxes: whether boxes go through the transform.
    """
    transforms: list[A.BasicTransform] = (
        [] if min_size is None else [ResizeShortestEdge(min_size, max_size, sample_style)])
    if flip_prob > 0:
        transforms.append(A.HorizontalFlip(p=flip_prob))
    if not with_boxes:
        return A.Compose(transforms)
    if not transforms:  # albumentations warns of box parameters that no transform uses
        transforms.append(A.NoOp())
    # the applied transforms (resize, flip) tell how each object's mask follows its image
    return A.Compose(transforms, bbox_params=A.BboxParams(format="pascal_voc",
                                                          label_fields=["box_ids"]),
                     save_applied_params=True)
