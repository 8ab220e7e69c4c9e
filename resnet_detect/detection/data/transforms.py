"""Albumentations transforms for detection: shortest-edge resize with a max size, flip, and
large scale jitter (a resize by a random factor, then a crop).

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
from albumentations.augmentations.crops import functional as fcrops
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


class _Resize(A.DualTransform):
    """A resize to the (H, W) that `get_params_dependent_on_data` gives as "new_shape"."""

    _targets = (Targets.IMAGE, Targets.MASK, Targets.BBOXES, Targets.KEYPOINTS)

    def __init__(self, interpolation: int = cv2.INTER_LINEAR, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.interpolation = interpolation

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


class ResizeShortestEdge(_Resize):
    """Resize so the shorter side is one of `short_edge_length` and the longer <= `max_size`.

    Args:
        short_edge_length: one length, or the lengths to sample from.
        max_size: cap on the longer side (None or 0: no cap).
        sample_style: "choice" picks one of the lengths; "range" draws an integer in
            [min, max] of the two given lengths.
        interpolation: OpenCV interpolation for images (masks use nearest).
        p: probability of applying.
    """

    def __init__(self, short_edge_length: int | Sequence[int], max_size: int | None = None,
                 sample_style: Literal["choice", "range"] = "choice",
                 interpolation: int = cv2.INTER_LINEAR, p: float = 1.0) -> None:
        super().__init__(interpolation, p)
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

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("short_edge_length", "max_size", "sample_style", "interpolation")


class ResizeScale(_Resize):
    """Large scale jitter's resize (detectron2's ResizeScale, mmdetection's RandomResize with a
    ratio_range): the image, its aspect kept, fits `size` x `size` times a factor drawn
    uniformly in `scale_range` (0.1 to 2.0: from a tenth of the square to twice its side).

    Args:
        size: the square's side (1024).
        scale_range: (lowest, highest) factor.
    """

    def __init__(self, size: int, scale_range: Sequence[float],
                 interpolation: int = cv2.INTER_LINEAR, p: float = 1.0) -> None:
        super().__init__(interpolation, p)
        low, high = (float(v) for v in scale_range)
        if size <= 0 or not 0 < low <= high:
            raise ValueError(f"ResizeScale takes a positive size and 0 < low <= high, got "
                             f"{size}, {scale_range}")
        self.size, self.scale_range = int(size), (low, high)

    def get_params_dependent_on_data(self, params: dict[str, Any],
                                     data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        factor = self.py_random.uniform(*self.scale_range) * self.size / max(height, width)
        new_h, new_w = max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))
        return {"new_shape": (new_h, new_w), "scale_xy": (new_w / width, new_h / height)}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "scale_range", "interpolation")


class RandomCropAtMost(A.RandomCrop):
    """Large scale jitter's crop (detectron2's FixedSizeCrop without its padding, which the
    batch's padding does): a random `height` x `width` window of a larger image, each side
    kept whole where it is shorter. Boxes are cut at its edges; those outside it dropped.
    `crop_coords` (x0, y0, x1, y1) of what was applied say where it lay."""

    def get_params_dependent_on_data(self, params: dict[str, Any],
                                     data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        size = (min(self.height, height), min(self.width, width))
        return {"crop_coords": fcrops.get_crop_coords(
            (height, width), size, self.py_random.random(), self.py_random.random()),
            "pad_params": None}


# the names in a sample's out["applied_transforms"] that the masks follow
RESIZES = (ResizeShortestEdge.__name__, ResizeScale.__name__)
CROP = RandomCropAtMost.__name__


def build_transforms(*, min_size: int | Sequence[int] | None, max_size: int | None,
                     sample_style: Literal["choice", "range"] = "choice",
                     flip_prob: float = 0.0, with_boxes: bool = True,
                     jitter: tuple[int, Sequence[float]] | None = None) -> A.Compose:
    """The detection pipeline: shortest-edge resize, then an optional horizontal flip; or,
    with `jitter`, large scale jitter: ResizeScale, the flip, RandomCropAtMost.

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
        jitter: (size, (lowest, highest) factor): large scale jitter in place of the
            shortest-edge resize (min_size and max_size unused).
    """
    transforms: list[A.BasicTransform] = []
    if jitter is not None:
        transforms.append(ResizeScale(*jitter))
    elif min_size is not None:
        transforms.append(ResizeShortestEdge(min_size, max_size, sample_style))
    if flip_prob > 0:
        transforms.append(A.HorizontalFlip(p=flip_prob))
    if jitter is not None:
        transforms.append(RandomCropAtMost(jitter[0], jitter[0]))
    if not with_boxes:
        return A.Compose(transforms)
    if not transforms:  # albumentations warns of box parameters that no transform uses
        transforms.append(A.NoOp())
    # the applied transforms (resize, flip, crop) tell how each object's mask follows its image
    return A.Compose(transforms, bbox_params=A.BboxParams(format="pascal_voc",
                                                          label_fields=["box_ids"]),
                     save_applied_params=True)
