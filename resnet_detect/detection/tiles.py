"""Sliced ("tiled") detection of large images (the config's `test.tiles`; SAHI's sliced
prediction, mmdetection's demo/large_image_demo.py).

The image is cut into overlapping tiles of `size` [height, width] image pixels, the last tile
of a row or column flush with the image's edge (never padded beyond it). Each tile gets the
model's normal test resize (`data.val.min_size` / `max_size`), so that small objects reach the
network larger than in the whole image resized. With `full_image` the whole image runs too
(SAHI's standard prediction: objects larger than a tile). Every pass's detections, shifted
into the image, go through one per-class NMS, by IoU or (`match_metric: ios`, SAHI's) by the
intersection over the smaller box, and the best `detections_per_image` are kept.
Mask R-CNN's box-relative masks move with their boxes and are pasted into the image at the
end. An image that fits in one tile runs once, as without tiles.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from resnet_detect.engine.config import (ConfigError, as_override, check_sizes, is_number,
                                         parse_bool)

from .config import test_resize
from .data import build_transforms
from .export import OnnxDetector
from .nms import batched_nms_top
from .rcnn import GeneralizedRCNN
from .roi_heads import paste_masks
from .tta import tta_from_config, tta_settings


# more tiles than this for one image are warned of (overlap 0.99 cut a photo into 261,051)
MANY_TILES = 1000
_said_many: set[tuple[int, tuple[int, int]]] = set()
logger = logging.getLogger(__name__)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Offsets of the tiles along one side: `tile` pixels apart less int(overlap * tile)
    (SAHI's rounding), the last one at length - tile; [0] where the side fits in one tile."""
    if length <= tile:
        return [0]
    step = tile - int(overlap * tile)
    return [*range(0, length - tile, step), length - tile]


@dataclass(frozen=True)
class Tiles:
    """Overlapping tiles of each image, their detections and the whole image's merged.

    Attributes:
        size: (height, width) of a tile in image pixels (an image side shorter than it is
            one tile of that side).
        overlap: fraction of a tile's side shared with the next tile, in [0, 1).
        full_image: also run the whole image.
        nms_thresh: overlap above which the merging NMS drops a box; None: the model's
            `nms_thresh`.
        match_metric: "iou", or "ios": the intersection over the smaller box's area, which
            also drops the piece of an object cut by a tile's edge beside its whole box.
        min_size, max_size: the test resize of every tile (and of the whole image).
        tiles_per_batch: tiles run through the model together.
    """

    size: tuple[int, int]
    overlap: float
    full_image: bool
    nms_thresh: float | None
    match_metric: str
    min_size: int
    max_size: int | None
    tiles_per_batch: int = 4

    def grid(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(y, x, h, w) of every tile of a height x width image, row by row."""
        th, tw = min(self.size[0], height), min(self.size[1], width)
        return [(y, x, th, tw) for y in tile_starts(height, th, self.overlap)
                for x in tile_starts(width, tw, self.overlap)]

    @torch.no_grad()
    def __call__(self, model: GeneralizedRCNN | OnnxDetector, image: np.ndarray, *,
                 pasted: bool = True) -> dict[str, Tensor]:
        """Detections of one image, as `model([resized], output_sizes=[(H, W)])[0]` gives
        them: {"boxes" (D, 4) xyxy in `image` pixels, "scores", "labels"} by decreasing
        score, and for Mask R-CNN "mask_probs" (D, M, M) and, unless not `pasted`, "masks"
        (D, H, W) (the evaluation encodes each mask from its box instead).

        Args:
            model: the detector, in evaluation mode, or an exported graph of box masks.
            image: (H, W, 3) uint8 RGB.
        """
        size = image.shape[:2]
        grid = self.grid(*size)
        if len(grid) > MANY_TILES and (len(grid), size) not in _said_many:
            _said_many.add((len(grid), size))
            logger.warning("%d tiles of %dx%d px at overlap %s for a %dx%d image: a pass of "
                           "the model each (800 px tiles at 0.2 cut a 4000x6000 photo into "
                           "60); test.tiles.size and test.tiles.overlap set it", len(grid),
                           *self.size, self.overlap, *size)
        resize = build_transforms(min_size=self.min_size, max_size=self.max_size,
                                  with_boxes=False)
        if len(grid) == 1:  # the tile is the image: one pass, as without tiles
            found = _detect(model, [image], resize)
        else:
            found = _detect(model, [image], resize) if self.full_image else []
            for start in range(0, len(grid), self.tiles_per_batch):
                chunk = grid[start:start + self.tiles_per_batch]
                crops = [image[y:y + h, x:x + w] for y, x, h, w in chunk]
                for (y, x, _, _), detections in zip(chunk, _detect(model, crops, resize)):
                    detections["boxes"] = detections["boxes"] + detections["boxes"].new_tensor(
                        [x, y, x, y])
                    found.append(detections)
        merged = {key: torch.cat([d[key] for d in found]) for key in found[0]}
        if len(found) > 1:
            nms_thresh, detections_per_image = _merging(model)
            threshold = nms_thresh if self.nms_thresh is None else self.nms_thresh
            merge = batched_nms_top if self.match_metric == "iou" else nms_over_smaller
            keep = merge(merged["boxes"], merged["scores"], merged["labels"], threshold,
                         detections_per_image)
            merged = {key: value[keep] for key, value in merged.items()}
        if model.mask_on and pasted:
            merged["masks"] = paste_masks(merged["mask_probs"], merged["boxes"], size,
                                          threshold=model.mask_threshold)
        return merged


def nms_over_smaller(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float,
                     k: int) -> Tensor:
    """Greedy per-class NMS by the intersection over the smaller box (SAHI's "IOS"): indices
    of the first `k` kept boxes by decreasing score. A box is dropped where its intersection
    with a higher-scoring kept box of its class is `threshold` times the smaller of the two
    areas or more (SAHI's comparison; an IoU NMS drops above its threshold)."""
    order = torch.argsort(scores, descending=True, stable=True)
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    keep = []
    while order.numel() and len(keep) < k:
        best, rest = order[0], order[1:]
        keep.append(best)
        lo = torch.maximum(boxes[best, :2], boxes[rest, :2])
        hi = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (hi - lo).clamp(min=0).prod(dim=1)
        smaller = torch.minimum(area[best], area[rest])
        # an empty box overlaps nothing; only boxes of the kept one's class are dropped
        drop = (inter >= threshold * smaller) & (smaller > 0) & (labels[rest] == labels[best])
        order = rest[~drop]
    return torch.stack(keep) if keep else order[:0]


def _merging(model: GeneralizedRCNN | OnnxDetector) -> tuple[float | None, int]:
    """The model's NMS threshold and detections per image: its box head's, or what an
    exported graph's export.json records."""
    if isinstance(model, OnnxDetector):  # (an export without nms_thresh needs the tiles')
        return model.metadata.get("nms_thresh"), model.metadata["detections_per_image"]
    head = model.roi_heads.box_predictor
    return head.nms_thresh, head.detections_per_image


def _detect(model: GeneralizedRCNN | OnnxDetector, images: list[np.ndarray],
            resize: Callable[..., Any]) -> list[dict[str, Tensor]]:
    """Each image's detections in its own pixels (masks not pasted), the images given the
    test `resize` and run as one batch (tiles of one size: each gets its own call's)."""
    device = model.pixel_mean.device
    tensors = [torch.from_numpy(np.ascontiguousarray(
        resize(image=image)["image"].transpose(2, 0, 1))).to(device) for image in images]
    return model.inference(tensors, output_sizes=[image.shape[:2] for image in images],
                           pasted=False)


def tiles_from_config(cfg: Mapping[str, Any]) -> Tiles | None:
    """The `test.tiles` section; None where `test.tiles.size` is null (no tiles).

    Raises:
        ConfigError: a bad `test.tiles.*` value, or tiles with test-time augmentation, named.
    """
    tiles = cfg["test"]["tiles"]
    size = tiles["size"]
    if size is not None:
        try:
            size = tuple(check_sizes(size, "test.tiles.size", count=2))
        except ConfigError:
            raise ConfigError(f"test.tiles.size must be [height, width], two positive integers "
                              f"(image pixels), or null (no tiles), got "
                              f"{as_override(size)}") from None
    overlap = tiles["overlap"]
    if not is_number(overlap) or not 0 <= overlap < 1:
        raise ConfigError(f"test.tiles.overlap must be a fraction of a tile in [0, 1) (SAHI's "
                          f"overlap ratio, e.g. 0.2), got {overlap!r}")
    full_image = parse_bool(tiles["full_image"], "test.tiles.full_image")
    nms_thresh = tiles["nms_thresh"]
    if nms_thresh is not None and (not is_number(nms_thresh) or not 0 < nms_thresh <= 1):
        raise ConfigError(f"test.tiles.nms_thresh must be an overlap in (0, 1], or null "
                          f"(model.roi_heads.nms_thresh), got {nms_thresh!r}")
    match_metric = tiles["match_metric"]
    if match_metric not in ("iou", "ios"):
        raise ConfigError(f"test.tiles.match_metric must be iou or ios (the intersection over "
                          f"the smaller box, SAHI's), got {as_override(match_metric)}")
    if size is None:
        return None
    if tta_from_config(cfg) is not None:
        asked, off = tta_settings(cfg)
        raise ConfigError(f"test.tiles.size={as_override(size)} does not combine with "
                          f"test-time augmentation ({asked}): add {off}, or "
                          f"test.tiles.size=null")
    min_size, max_size = test_resize(cfg)
    return Tiles(size=size, overlap=float(overlap), full_image=full_image,
                 nms_thresh=None if nms_thresh is None else float(nms_thresh),
                 match_metric=match_metric, min_size=min_size, max_size=max_size)


def describe(tiles: Tiles, model: GeneralizedRCNN | OnnxDetector) -> str:
    """One line for logs: the tiles and what they merge with."""
    threshold = _merging(model)[0] if tiles.nms_thresh is None else tiles.nms_thresh
    metric = "IoU" if tiles.match_metric == "iou" else "intersection over the smaller box"
    return (f"tiles of {tiles.size[0]}x{tiles.size[1]} px, overlap {tiles.overlap}, each "
            f"resized to a short edge of {tiles.min_size} (max {tiles.max_size})"
            f"{', and the whole image' if tiles.full_image else ''}; merged by per-class NMS "
            f"at {metric} {threshold} (an image that fits in a tile runs once, as without)")


def refuse_tiles(cfg: Mapping[str, Any], what: str) -> None:
    """Refuses a config with tiles where `what` runs the whole image once (an exported
    graph), naming the key to change."""
    tiles = tiles_from_config(cfg)
    if tiles is not None:
        raise ConfigError(f"{what} runs the whole image once; the config asks for tiles "
                          f"(test.tiles.size={as_override(tiles.size)}): add test.tiles.size=null "
                          f"(an exported graph takes tiles where it runs: tools/eval.py, "
                          f"tools/demo.py, Predictor)")
