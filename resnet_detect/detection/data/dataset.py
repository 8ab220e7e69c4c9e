"""Detection dataset: records -> decoded, augmented samples (M objects per image).

A sample:
    {"image": uint8 (3, H, W) RGB after resizing, "image_id": int, "file_name": str,
     "height": int, "width": int (the original image size, for mapping predictions back),
     "gt_boxes": float32 (M, 4) xyxy in resized-image pixels, "gt_classes": int64 (M,),
     "gt_masks": uint8 (M, H, W), or the objects' PolygonMasks (only with with_masks=True)}

Padding to the backbone's size divisibility is the model's job, not this module's.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import (DatasetError, PackedRecords, UnreadableImageError,
                                       read_image, segmentation_to_mask, warn_of_unreadable)

from .polygons import PolygonMasks
from .transforms import CROP, RESIZES, ResizeShortestEdge

logger = logging.getLogger(__name__)

# an index, (index, augmentation seed) from TrainingSampler, or (index, seed, short edge) from
# `batch_keys` when every image of a batch takes the same training scale
SampleKey = int | tuple[int, int] | tuple[int, int, int]

# the transforms that move pixels which `object_masks` follows: resizes (params["new_shape"]),
# the flip, the crop (params["crop_coords"])
MASK_MOVES = (*RESIZES, "HorizontalFlip", CROP)
# images whose sides differ by at most this factor batch together as near-square
SQUARE_ASPECT = 1.2


def aspect_groups(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """Aspect-ratio bucket of every record: landscape 0, portrait 1, near-square 2.

    Batches are drawn within one bucket, so padding to the largest image wastes little; a
    near-square image batched with landscape ones would be padded to their width. (Until
    2026-12-01 square images went with the landscape ones: a run checkpointed before then
    resumes into another order of batches.)
    """
    ids = []
    for r in records:
        height, width = r["height"], r["width"]
        if max(height, width) <= SQUARE_ASPECT * min(height, width):
            ids.append(2)
        else:
            ids.append(0 if width > height else 1)
    return np.asarray(ids, dtype=np.int64)


def object_masks(segmentations: Sequence[Any], height: int, width: int,
                 applied: Sequence[tuple[str, dict[str, Any]]], centred: bool = False
                 ) -> np.ndarray:
    """uint8 (M, H', W') masks of objects (COCO segmentations of an H x W image; None: no
    mask) after the transforms applied to their image (its resize, flip and crop; the others
    must change pixels alone), one object at a time: a dense image's masks stacked at full size
    took gigabytes and seconds. The resize is the nearest pixel's, from the corner as
    torchvision's (about half a pixel right and down, which the unaligned RoIAlign of the
    targets takes back), or `centred` for an aligned RoIAlign (as detectron2's PIL resize)."""
    # the flip first, then the resize (they commute), as torchvision's reference pipeline:
    # a flip after the resize mirrored its half pixel, and the flipped targets were a pixel off;
    # the crop (after both) last
    order = {"HorizontalFlip": 0, **dict.fromkeys(RESIZES, 1), CROP: 2}
    applied = sorted(((n, p) for n, p in applied if n in MASK_MOVES), key=lambda m: order[m[0]])
    shape = (height, width)
    for name, params in applied:
        if name in RESIZES:
            shape = tuple(params["new_shape"])
        elif name == CROP:
            x0, y0, x1, y1 = params["crop_coords"]
            shape = (y1 - y0, x1 - x0)
    out = np.zeros((len(segmentations), *shape), dtype=np.uint8)
    for mask, segmentation in zip(out, segmentations):
        if segmentation is None:  # a val object without one
            continue
        full = segmentation_to_mask(segmentation, height, width)
        for name, params in applied:
            if name in RESIZES:
                new_h, new_w = params["new_shape"]
                full = cv2.resize(full, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT
                                  if centred else cv2.INTER_NEAREST)
            elif name == CROP:
                x0, y0, x1, y1 = params["crop_coords"]
                full = full[y0:y1, x0:x1]
            else:
                full = full[:, ::-1]
        mask[...] = full
    return out


def _fit_boxes_to_cut_masks(sample: dict[str, Any], crop_coords: Sequence[int],
                            resized: Sequence[int]) -> None:
    """The objects a crop cut (large scale jitter's): a box cut at the window's edge can be
    larger than what is left of its object; it becomes the tight box of the object's mask in
    the window (detectron2's recompute_boxes, mmdetection's recompute_bbox). An object of
    which no pixel is left, cut or shrunk below a pixel by a small factor, is dropped (their
    filter of empty instances)."""
    x0, y0, x1, y1 = crop_coords
    height, width = y1 - y0, x1 - x0
    boxes = sample["gt_boxes"].numpy().copy()
    cut = (((x0 > 0) & (boxes[:, 0] <= 1e-3)) | ((y0 > 0) & (boxes[:, 1] <= 1e-3))
           | ((x1 < resized[1]) & (boxes[:, 2] >= width - 1e-3))
           | ((y1 < resized[0]) & (boxes[:, 3] >= height - 1e-3)))
    tiny = ((boxes[:, 2:] - boxes[:, :2]) < 2).any(axis=1)
    masks = sample["gt_masks"]
    keep = np.ones(len(boxes), dtype=bool)
    for k in np.flatnonzero(cut | tiny):
        pixels = (masks[k].numpy() if isinstance(masks, torch.Tensor)
                  else PolygonMasks([masks.objects[k]]).bitmasks(height, width)[0])
        ys, xs = np.nonzero(pixels)
        if not len(xs):
            keep[k] = False
        elif cut[k]:
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    sample["gt_boxes"] = torch.from_numpy(boxes[keep])
    sample["gt_classes"] = sample["gt_classes"][torch.from_numpy(keep)]
    sample["gt_masks"] = (masks[torch.from_numpy(keep)] if isinstance(masks, torch.Tensor)
                          else PolygonMasks([masks.objects[k] for k in np.flatnonzero(keep)]))


MASK_FORMATS = ("bitmask", "polygon")


def check_mask_format(value: Any) -> None:
    """data.train.mask_format: one of MASK_FORMATS."""
    if value not in MASK_FORMATS:
        raise ConfigError(f"data.train.mask_format must be one of {', '.join(MASK_FORMATS)}, "
                          f"got {value!r}")


def _refuse_rle(records: Sequence[dict[str, Any]]) -> None:
    """Polygon targets need polygons (detectron2 refuses an RLE there too)."""
    rle = [f"annotation id={r['annotation_ids'][k]} (image id={r['image_id']})"
           for r in records for k, s in enumerate(r["segmentations"]) if isinstance(s, dict)]
    if rle:
        raise DatasetError(f"data.train.mask_format=polygon: {len(rle)} objects have an RLE "
                           f"segmentation, not polygons ({', '.join(rle[:3])}"
                           f"{', ...' if len(rle) > 3 else ''}); train them with "
                           f"data.train.mask_format=bitmask")


class DetectionDataset(Dataset):
    """Decode, augment and convert records from `load_coco_json` into model inputs.

    Args:
        records: per-image records from `load_coco_json`.
        transform: from `build_transforms` (with boxes).
        with_masks: also return `gt_masks` (records need `segmentations`).
        mask_format: "bitmask" (gt_masks: uint8 (M, H, W) at the image's size) or "polygon"
            (gt_masks: the objects' polygons, `PolygonMasks`; every segmentation a polygon
            list: an RLE is refused here, naming it).
        aligned_masks: the bitmask targets are cropped by an aligned RoIAlign
            (`model.roi_heads.pooler_aligned`): their masks are resized centred.
        scale_per_batch: `batch_keys` gives every image of a batch one training scale
            (drawn as the transform's first top-level ResizeShortestEdge draws it per image),
            so a batch is padded only to its largest aspect ratio, not also to its largest
            scale.
    """

    def __init__(self, records: Sequence[dict[str, Any]], *, transform: A.Compose,
                 with_masks: bool = False, scale_per_batch: bool = False,
                 mask_format: str = "bitmask", aligned_masks: bool = False) -> None:
        check_mask_format(mask_format)
        if with_masks:
            moves = [type(t).__name__ for t in transform.transforms
                     if not isinstance(t, (A.ImageOnlyTransform, A.NoOp))]
            if not transform.save_applied_params or set(moves) - set(MASK_MOVES):
                raise ValueError(f"with_masks takes a transform that records what it applied "
                                 f"(save_applied_params=True, as build_transforms makes) and "
                                 f"moves pixels only by {', '.join(MASK_MOVES)}; got {moves}")
            for r in records:
                if "segmentations" not in r:
                    raise ValueError(f"image id {r['image_id']} ({r['file_name']}): with_masks "
                                     "needs the objects' segmentations (load the records "
                                     "with keep_segmentation=True)")
            if mask_format == "polygon":
                _refuse_rle(records)
        self._records = PackedRecords(records)
        self.group_ids = aspect_groups(records)
        self.transform = transform
        self.with_masks = with_masks
        self.mask_format = mask_format
        self.aligned_masks = aligned_masks
        self._resize = None
        if scale_per_batch:
            resizes = [t for t in transform.transforms if isinstance(t, ResizeShortestEdge)]
            if not resizes:
                raise ValueError("scale_per_batch needs a ResizeShortestEdge in the transform")
            self._resize = resizes[0]
        self.num_skipped = 0  # unreadable images seen by this process
        self.said_unreadable: set[str] = set()
        self.repeat_factors: np.ndarray | None = None  # set for repeat factor sampling

    def __len__(self) -> int:
        return len(self._records)

    def contents_digest(self) -> str:
        """Its files and labels, hashed (the processes of a run compare it)."""
        return self._records.digest(("file_name",))

    def batch_keys(self, keys: list[tuple[int, int]]) -> list[SampleKey]:
        """The keys of one training batch, each with the batch's short edge when
        scale_per_batch is on (drawn from the first key's seed, so a resumed run draws the
        same); otherwise the keys as given."""
        if self._resize is None or not keys:
            return list(keys)
        # a stream apart from the one that seed gives the image's own augmentation
        short = self._resize.draw_short_edge(random.Random(f"batch scale {keys[0][1]}"))
        return [(index, seed, short) for index, seed in keys]

    def record(self, index: int) -> dict[str, Any]:
        """The raw record of an image."""
        return self._records[index]

    def __getitem__(self, key: SampleKey) -> dict[str, Any] | None:
        """The sample of `key`, or None when the image cannot be decoded (logged and counted).

        Args:
            key: an index, or (index, seed) to make the augmentation reproducible without
                global state (a bare index augments with the index as its seed), or
                (index, seed, short edge) to resize to that length.
        """
        if isinstance(key, tuple):
            index, seed, short_edge = (*key, None)[:3]
        else:
            index, seed, short_edge = key, None, None
        record = self._records[index]
        try:
            image = read_image(record["file_name"])
        except UnreadableImageError as err:
            return self._skip(f"{err} (image id {record['image_id']})")
        height, width = record["height"], record["width"]
        if image.shape[:2] != (height, width):
            return self._skip(
                f"{record['file_name']} (image id {record['image_id']}): decoded size "
                f"{image.shape[1]}x{image.shape[0]} differs from the annotation's {width}x{height} "
                "(after EXIF rotation, if the file has an orientation tag)")
        if seed is None:  # drawing one would move the training's torch generator
            seed = index
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        boxes, classes = record["boxes"], record["classes"]
        out = self.transform(image=image, bboxes=boxes, box_ids=np.arange(len(boxes)),
                             short_edge=short_edge)
        keep = np.asarray(out["box_ids"], dtype=np.int64)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
            "image_id": record["image_id"], "file_name": record["file_name"],
            "height": height, "width": width,
            "gt_boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "gt_classes": torch.from_numpy(classes[keep]),
        }
        if self.with_masks and self.mask_format == "polygon":
            sample["gt_masks"] = PolygonMasks(
                [record["segmentations"][i] for i in keep]).moved(
                    [(n, p) for n, p in out["applied_transforms"] if n in MASK_MOVES],
                    height, width)
        elif self.with_masks:
            sample["gt_masks"] = torch.from_numpy(object_masks(
                [record["segmentations"][i] for i in keep], height, width,
                out["applied_transforms"], centred=self.aligned_masks))
        applied = dict(out["applied_transforms"]) if self.with_masks else {}
        if CROP in applied:
            resized = next(applied[n]["new_shape"] for n in RESIZES if n in applied)
            _fit_boxes_to_cut_masks(sample, applied[CROP]["crop_coords"], resized)
        return sample

    def _skip(self, reason: str) -> None:
        self.num_skipped += 1
        warn_of_unreadable(logger, reason, self.said_unreadable)
