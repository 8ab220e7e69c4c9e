"""Test-time augmentation for detection (the config's `test` section; detectron2's TEST.AUG).

Every image is resized to each short edge of `min_sizes` (the longer side capped by
`max_size`), each view also flipped horizontally with `flip`. The box branch runs on every
view; the detections, mapped back to the image, go through one per-class NMS (the model's
`nms_thresh`) and the best `detections_per_image` are kept. With a mask branch, the masks of
those boxes are predicted in every view (the boxes mapped into it) and their probabilities
averaged, flipped views flipped back, before pasting. The backbone runs again for the masks,
as in detectron2, rather than holding every view's feature maps.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from resnet_detect.engine.config import (ConfigError, as_override, check_sizes, is_positive_int,
                                         parse_bool)

from .config import test_resize
from .data import build_transforms
from .nms import batched_nms_top
from .rcnn import GeneralizedRCNN
from .roi_heads import paste_masks


@dataclass(frozen=True)
class DetectionTTA:
    """Several resized and flipped views of each image, their detections merged.

    Attributes:
        min_sizes: short edges each image is resized to, one view each.
        max_size: cap on the longer side of a view (None: none).
        flip: also run each view flipped horizontally.
    """

    min_sizes: tuple[int, ...]
    max_size: int | None
    flip: bool

    @property
    def views(self) -> list[tuple[int, bool]]:
        """(short edge, flipped) of every view."""
        return [(size, flipped) for size in self.min_sizes
                for flipped in ((False, True) if self.flip else (False,))]

    @torch.no_grad()
    def __call__(self, model: GeneralizedRCNN, image: np.ndarray, *,
                 pasted: bool = True) -> dict[str, Tensor]:
        """Detections of one image, as `model([view], output_sizes=[(H, W)])[0]` gives them
        for a single view: {"boxes" (D, 4) xyxy in `image` pixels, "scores", "labels"} by
        decreasing score, and for Mask R-CNN "mask_probs" (D, M, M) and, unless not
        `pasted`, "masks" (D, H, W) (the evaluation encodes each mask from its box instead).

        Args:
            model: the detector, in evaluation mode.
            image: (H, W, 3) uint8 RGB.
        """
        size = image.shape[:2]
        device = model.pixel_mean.device
        views, found = [], []
        for short_edge, flipped in self.views:
            resize = build_transforms(min_size=short_edge, max_size=self.max_size,
                                      with_boxes=False)
            pixels = resize(image=image)["image"]
            if flipped:
                pixels = pixels[:, ::-1]
            view = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).to(device)
            (detections,), _, _ = model.detect_boxes([view])
            boxes = view_to_image(detections["boxes"], tuple(view.shape[-2:]), size, flipped)
            found.append((boxes, detections["scores"], detections["labels"]))
            views.append((view, flipped))
        boxes, scores, labels = (torch.cat(parts) for parts in zip(*found))
        head = model.roi_heads.box_predictor
        keep = batched_nms_top(boxes, scores, labels, head.nms_thresh, head.detections_per_image)
        result = {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
        if model.mask_on:
            probs = torch.stack([_mask_probs(model, view, flipped, result, size)
                                 for view, flipped in views]).mean(dim=0)
            result["mask_probs"] = probs
            if pasted:
                result["masks"] = paste_masks(probs, result["boxes"], size,
                                              threshold=model.mask_threshold)
        return result


def view_to_image(boxes: Tensor, view_size: tuple[int, int], image_size: tuple[int, int],
                  flipped: bool) -> Tensor:
    """(D, 4) xyxy boxes of a view (h, w) -> the image's (H, W) pixels (unflipped first)."""
    (h, w), (height, width) = view_size, image_size
    if flipped:
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return boxes * boxes.new_tensor([width / w, height / h, width / w, height / h])


def image_to_view(boxes: Tensor, image_size: tuple[int, int], view_size: tuple[int, int],
                  flipped: bool) -> Tensor:
    """(D, 4) xyxy boxes of the image (H, W) -> a view's (h, w) pixels (flipped last)."""
    (height, width), (h, w) = image_size, view_size
    boxes = boxes * boxes.new_tensor([w / width, h / height, w / width, h / height])
    if flipped:
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return boxes


def _mask_probs(model: GeneralizedRCNN, view: Tensor, flipped: bool,
                detections: dict[str, Tensor], image_size: tuple[int, int]) -> Tensor:
    """(D, M, M) box-relative mask probabilities of the image's detections, seen in `view`."""
    batch, _ = model.preprocess([view])
    features = model.backbone(batch)
    boxes = image_to_view(detections["boxes"], image_size, tuple(view.shape[-2:]), flipped)
    (predicted,) = model.roi_heads.predict_masks(
        features, [{"boxes": boxes, "labels": detections["labels"]}])
    probs = predicted["mask_probs"]
    return probs.flip(-1) if flipped else probs


def tta_from_config(cfg: Mapping[str, Any]) -> DetectionTTA | None:
    """The `test` section's augmentation; None where it asks for the plain single view
    (`data.val.min_size` capped by `data.val.max_size`, not flipped).

    Raises:
        ConfigError: a bad `test.*` value, named.
    """
    test = cfg["test"]
    min_size, max_size = test_resize(cfg)
    flip = parse_bool(test["flip"], "test.flip")
    sizes = test["min_sizes"]
    sizes = (min_size,) if sizes is None else tuple(check_sizes(sizes, "test.min_sizes"))
    if test["max_size"] is not None:
        if not is_positive_int(test["max_size"]):
            raise ConfigError(f"test.max_size must be a positive integer (pixels) or null "
                              f"(data.val.max_size), got {test['max_size']!r}")
        max_size = int(test["max_size"])
    if not flip and sizes == (min_size,) and max_size == test_resize(cfg)[1]:
        return None
    return DetectionTTA(min_sizes=sizes, max_size=max_size, flip=flip)


def describe(tta: DetectionTTA | None) -> str:
    """One line for logs: the views of `tta`, or that there is one."""
    if tta is None:
        return "one view"
    views = len(tta.views)
    return (f"{views} view{'s' * (views != 1)}: short edges {list(tta.min_sizes)}, max size "
            f"{tta.max_size}{', flipped too' if tta.flip else ''}")


def tta_settings(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """The test-time augmentation keys `cfg` sets, as `key=value` overrides, and the
    overrides that turn them off."""
    test = cfg["test"]
    keys = [key for key in ("min_sizes", "max_size") if test[key] is not None]
    if parse_bool(test["flip"], "test.flip"):
        keys.append("flip")
    return (" ".join(f"test.{key}={as_override(test[key])}" for key in keys),
            " ".join(f"test.{key}={'false' if key == 'flip' else 'null'}" for key in keys))


def refuse_tta(cfg: Mapping[str, Any], what: str) -> None:
    """Refuses a config with test-time augmentation where `what` runs one view (an
    exported graph), naming the keys to change."""
    if tta_from_config(cfg) is not None:
        asked, off = tta_settings(cfg)
        raise ConfigError(f"{what} runs one view (data.val.min_size, data.val.max_size, no "
                          f"flip); the config asks for {asked}: add {off}")
