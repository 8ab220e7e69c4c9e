"""COCO evaluation of detections (boxes, and masks once a model predicts them).

Per image (R detections): boxes float (R, 4) xyxy in original image pixels, scores (R,),
labels int (R,) contiguous 0..K-1, optionally masks at the original size (bool (R, H, W), or
R RLEs: `instances_to_coco_results`).
Results are written in COCO results format (xywh boxes, dataset category ids, RLE masks) and
scored by pycocotools' COCOeval or by faster-coco-eval, which gives the same numbers faster.
An LVIS file (images with `neg_category_ids` / `not_exhaustive_category_ids`) is scored with
LVIS's federated AP by either (federated.py).
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data.coco import (MAX_LISTED, DatasetError, box_polygon, brief,
                                            check_segmentation, collector_paused, image_sizes,
                                            listing, only_categories, read_coco_json,
                                            segmentation_to_rle)
from resnet_detect.engine.distributed import all_gather_object
from resnet_detect.engine.logging import print_and_log
from resnet_detect.engine.same_everywhere import done_by_the_main_process

from .roi_heads.mask_paste import pasted_regions
from .federated import (IMAGE_LISTS, LVIS_MAX_DETS, Federation, frequency_group_aps,
                        check_lvis_file, is_federated, partly_listed)
from .voc_eval import check_voc_metric, evaluate_voc

logger = logging.getLogger(__name__)

BACKENDS = ("pycocotools", "faster_coco_eval")
IOU_TYPES = ("bbox", "segm")
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULTS_FILE = "coco_instances_results.json"
COCO_MAX_DETS = 100  # detections scored per image and category: COCO's standard
TABLE_CATEGORIES = 100  # more: the summary logs the lowest and highest APs, not all
# The 12 numbers of COCOeval.stats: (precision?, IoU, area, max detections: None = max_dets)
_STAT_ROWS = (
    (True, None, "all", None), (True, 0.5, "all", None), (True, 0.75, "all", None),
    (True, None, "small", None), (True, None, "medium", None), (True, None, "large", None),
    (False, None, "all", 1), (False, None, "all", 10), (False, None, "all", None),
    (False, None, "small", None), (False, None, "medium", None), (False, None, "large", None),
)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of an (H, W) 0/1 mask, JSON-ready ({"size": [H, W], "counts": str}).

    ``pycocotools.mask.decode`` of it (counts as str or bytes) gives the mask back.

    The string is ``pycocotools.mask.encode``'s of the mask as a Fortran-ordered uint8 array,
    but that array is never made: the runs are read from the mask's smallest box holding its
    pixels, and pycocotools compresses them (a photo's column-ordered copy, made for each of
    its detections, was most of a large photo's evaluation time: BENCHMARKS.md, "Mask R-CNN
    evaluation of 24-megapixel photos").
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        mask = np.asarray(mask, dtype=np.uint8)
    if mask.ndim == 2:
        counts = _run_lengths(mask)
        if counts is not None:
            return _compressed(counts, mask.shape)
    return _as_json(mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8)))


def _run_lengths(mask: np.ndarray) -> np.ndarray | None:
    """The uncompressed COCO run lengths of an (H, W) bool or uint8 0/1 mask (see
    `_region_run_lengths`); None where a value is above 1 (a run of 2s is a run of its own
    for pycocotools)."""
    columns = np.flatnonzero(mask.any(axis=0))
    if len(columns) == 0:
        return _region_run_lengths(mask[:0, :0], 0, 0, mask.shape)
    left, right = int(columns[0]), int(columns[-1]) + 1
    rows = np.flatnonzero(mask[:, left:right].any(axis=1))
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    region = mask[top:bottom, left:right]
    if region.dtype != np.bool_:
        if region.max() > 1:
            return None
        region = region.astype(np.bool_)
    return _region_run_lengths(region, top, left, mask.shape)


def _region_run_lengths(region: np.ndarray, top: int, left: int,
                        image_size: tuple[int, int]) -> np.ndarray:
    """The uncompressed COCO run lengths of the (H, W) mask that is the bool `region` at
    rows top.., columns left.. and empty elsewhere: read down its columns from the top-left
    pixel, starting with a run of zeros (0 where the first pixel is set), as pycocotools'
    rleEncode counts them."""
    height, width = (int(v) for v in image_size)
    # each column of the region between two zeros: a run starts where 0 turns 1, ends where
    # 1 turns 0, at positions counted in the whole image's column order
    framed = np.zeros((region.shape[1], region.shape[0] + 2), dtype=np.int8)
    framed[:, 1:-1] = region.T
    column, row = np.nonzero(np.diff(framed, axis=1))
    edges = (left + column.astype(np.int64)) * height + top + row
    # a run reaching the last row goes on at the top of the next column when it starts there
    joined = edges[1:] == edges[:-1]
    if joined.any():
        keep = np.ones(len(edges), dtype=bool)
        keep[1:] &= ~joined
        keep[:-1] &= ~joined
        edges = edges[keep]
    counts = np.diff(edges, prepend=0, append=height * width)
    return counts[:-1] if len(counts) > 1 and counts[-1] == 0 else counts


def _compressed(counts: np.ndarray, image_size: tuple[int, int]) -> dict[str, Any]:
    """`mask_to_rle`'s dict of uncompressed run lengths, compressed by pycocotools."""
    height, width = (int(v) for v in image_size)
    return _as_json(mask_utils.frPyObjects({"size": [height, width], "counts": counts},
                                           height, width))


def _as_json(rle: dict[str, Any]) -> dict[str, Any]:
    """pycocotools' compressed RLE with its counts as text and its size as ints."""
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def pasted_mask_rles(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], *,
                     threshold: float = 0.5) -> Iterator[dict[str, Any]]:
    """`mask_to_rle` of each mask `paste_masks` pastes (same arguments), as they are taken,
    without pasting them: each is encoded from its box region (`pasted_regions`), so that a
    large photo's detections need no full-size masks."""
    for top, left, region in pasted_regions(masks, boxes, image_size, threshold=threshold):
        yield _compressed(_region_run_lengths(region.cpu().numpy(), top, left, image_size),
                          image_size)


def mask_rles(detections: Mapping[str, Any], image_size: tuple[int, int], *,
              threshold: float) -> Iterator[dict[str, Any]]:
    """The `mask_to_rle` of each of a detector's masks: its "masks" (D, H, W) where it pasted
    them, else its box-relative "mask_probs" pasted at `threshold` one box region at a time
    (`pasted_mask_rles`)."""
    if "masks" in detections:
        return (mask_to_rle(mask) for mask in detections["masks"])
    return pasted_mask_rles(detections["mask_probs"], detections["boxes"], image_size,
                            threshold=threshold)


def instances_to_coco_results(image_id: int, boxes: Any, scores: Any, labels: Any, *,
                              category_ids: Sequence[int], masks: Any = None,
                              ) -> list[dict[str, Any]]:
    """COCO results entries for one image's detections.

    Args:
        image_id: the image's id in the ground-truth file.
        boxes: (R, 4) xyxy in original image pixels.
        scores: (R,) confidences.
        labels: (R,) contiguous labels 0..K-1, as the model gives them (a `Predictor`'s are
            category ids already).
        category_ids: dataset category id of each contiguous label.
        masks: optional (R, H, W) boolean masks at the original image size, or R such masks
            as they come, or R of their RLEs as `mask_to_rle` gives them (`pasted_mask_rles`).

    Raises:
        ValueError: a label outside 0..K-1.
    """
    boxes = _numpy(boxes).astype(np.float64).reshape(-1, 4)
    scores, labels = _numpy(scores).reshape(-1), _numpy(labels).astype(np.int64).reshape(-1)
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(category_ids):
        raise ValueError(f"labels are the model's 0..{len(category_ids) - 1} (one per category "
                         f"id), got {labels.min()}..{labels.max()}: a Predictor's labels are "
                         f"category ids already")
    ids = np.asarray(category_ids, dtype=np.int64)[labels]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    results = [{"image_id": int(image_id), "category_id": int(ids[i]),
                "bbox": [round(float(v), 3) for v in xywh[i]], "score": float(scores[i])}
               for i in range(len(boxes))]
    if masks is not None:
        if isinstance(masks, torch.Tensor):
            masks = _numpy(masks)  # each made uint8 in turn: no copy of them all
        for result, mask in zip(results, masks, strict=True):
            result["segmentation"] = mask if isinstance(mask, dict) else mask_to_rle(mask)
    return results


def ground_truth(ann_file: Path, iou_type: str, categories: Iterable[int] | None = None, *,
                 data: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """The file's content (checked as for training) as COCOeval reads it.

    Fields many converters leave out get COCO's meaning: `iscrowd` 0, and `area` (or a null one) the
    mask's area (the box's where there is no usable mask). For segm, an object without a usable
    mask (no segmentation, or no polygon of 3 points) becomes a crowd region over its box:
    ignored, as training leaves it out; a malformed or mis-sized segmentation is refused, as
    training and the evaluation of weights refuse it (pycocotools scored some of them its way,
    this a box in their place: two APs for one file). An LVIS file (federated.py) has
    no crowd regions besides those, and no objects of area 0, as lvis-api reads it. Returns
    (dataset, the annotation ids of the objects so ignored). `categories`: those alone
    (data.classes); `data`: the file's content where the caller has read it (read_coco_json's).
    """
    data = read_coco_json(ann_file) if data is None else data
    if categories is not None:
        data = only_categories(data, categories)
    if iou_type == "bbox" and any(ann.get("id") == 0 for ann in data["annotations"]):
        others = ("lvis-api, detectron2 and mmdetection" if is_federated(data)
                  else "detectron2 and mmdetection (through pycocotools)")
        warnings.warn(f"{ann_file}: an object has annotation id 0, which pycocotools takes "
                      f"for no match: {others} count its detection as a false one, here it "
                      f"is scored as any other (their AP on this file is lower; number the ids "
                      f"from 1 to compare)",
                      RuntimeWarning, stacklevel=3)
    marked = sum(bool(ann.get("ignore", 0) and not ann.get("iscrowd", 0))
                 for ann in data["annotations"])
    if marked:  # (mmdetection's flag; training leaves them out. Said once: the same text)
        warnings.warn(f"{ann_file}: {marked} objects marked \"ignore\": 1 are scored as "
                      f"objects " + (
            "(LVIS's AP here reads neither \"ignore\" nor \"iscrowd\"; lvis-api makes "
            "\"ignore\": 1 objects regions where a detection counts neither way: its AP on "
            "this file differs, and no setting here gives it)" if is_federated(data) else
            "(pycocotools reads iscrowd alone; mark them \"iscrowd\": 1 to leave them out of "
            "the scoring)"), RuntimeWarning, stacklevel=3)
    try:
        return cocoeval_ground_truth(data, iou_type)
    except MalformedMasks as err:
        raise DatasetError(f"{ann_file}: {err}") from None


class MalformedMasks(ValueError):
    """Segmentations the segm evaluation cannot score, one line per object."""


def cocoeval_ground_truth(data: dict[str, Any],
                          iou_type: str) -> tuple[dict[str, Any], list[Any]]:
    """`ground_truth` of a file's content (as `read_coco_json` returns it).

    Raises:
        MalformedMasks: for segm, objects whose segmentation is malformed or mis-sized.
    """
    federated = is_federated(data)
    sizes = image_sizes(data)
    annotations, ignored, malformed = [], [], []
    # numbered from 1: COCOeval takes a matched object's id 0 for no match, so a file numbered
    # from 0 (Label Studio's, CVAT's) scored the detection of its first object as a false one
    for number, ann in enumerate(data["annotations"], start=1):
        given_id = ann.get("id")
        ann = {**ann, "id": number, "iscrowd": 0 if federated else ann.get("iscrowd", 0)}
        w, h = (float(v) for v in ann["bbox"][2:])
        segmentation = None
        if ann.get("segmentation") is not None and (iou_type == "segm"
                                                    or ann.get("area") is None):
            try:  # (bbox needs no mask but for the area)
                segmentation, _ = check_segmentation(ann["segmentation"],
                                                     *sizes[ann["image_id"]])
            except (TypeError, ValueError) as err:
                if iou_type == "segm":
                    malformed.append(f"annotation id={given_id} (image id={ann['image_id']})"
                                     f"{', a crowd region' if ann['iscrowd'] else ''}: {err}")
        if iou_type == "segm":
            if segmentation:
                ann["segmentation"] = segmentation
            else:
                if not ann["iscrowd"]:
                    ignored.append(given_id)
                height, width = sizes[ann["image_id"]]
                box = box_polygon(ann["bbox"], width=width, height=height)
                if box is None:  # no pixels to ignore (and an infinite box crashed pycocotools)
                    continue
                ann["segmentation"], ann["iscrowd"] = [box], 1
        if ann.get("area") is None:
            ann["area"] = (float(mask_utils.area(segmentation_to_rle(
                segmentation, *sizes[ann["image_id"]]))) if segmentation else w * h)
        if federated and not ann["area"] > 0:
            continue
        annotations.append(ann)
    if malformed:
        raise MalformedMasks(f"{len(malformed)} problem(s):{listing(malformed)}")
    return {**data, "annotations": annotations}, ignored


def _load_gt(dataset: dict[str, Any], backend: str) -> Any:
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        coco = COCO()
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    from faster_coco_eval import COCO as FasterCOCO
    return FasterCOCO(dataset)  # (an LVIS file's frequencies are checked: check_lvis_file)


def _load_results(coco_gt: Any, results: list[dict[str, Any]], backend: str) -> Any:
    """`results` (entries loadRes and COCOeval may change: set keys of) as COCOeval reads them."""
    if results or backend != "pycocotools":
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(results)
    # pycocotools' loadRes cannot take an empty list; an empty result set scores 0 where
    # ground truth exists, like any set that finds nothing.
    from pycocotools.coco import COCO
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                     "categories": copy.deepcopy(coco_gt.dataset["categories"])}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def _run_cocoeval(coco_gt: Any, coco_dt: Any, iou_type: str, backend: str,
                  max_dets: int = COCO_MAX_DETS, federation: Federation | None = None) -> Any:
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    else:
        from faster_coco_eval import COCOeval_faster
        evaluator = COCOeval_faster(coco_gt, coco_dt, iou_type, lvis_style=federation is not None,
                                    print_function=lambda *args, **kwargs: None)
    evaluator.params.maxDets = [1, 10, max_dets]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        if federation is not None and backend == "pycocotools":
            federation.ignore_unmatched_not_exhaustive(evaluator.evalImgs)
        evaluator.accumulate()
    return evaluator


def _stats(evaluator: Any) -> list[float]:
    """COCOeval's 12 summary numbers (fractions, -1 = undefined) from its accumulated arrays,
    at its maxDets: pycocotools' summarize() takes the first AP at 100 detections whatever
    maxDets says (-1 for maxDets [1, 10, 1000])."""
    p = evaluator.params
    precision = np.asarray(evaluator.eval["precision"])  # (IoU, recall, class, area, maxDets)
    recall = np.asarray(evaluator.eval["recall"])  # (IoU, class, area, maxDets)
    stats = []
    for is_precision, iou, area, dets in _STAT_ROWS:
        a, m = list(p.areaRngLbl).index(area), list(p.maxDets).index(dets or p.maxDets[-1])
        values = precision[..., a, m] if is_precision else recall[..., a, m]
        if iou is not None:
            values = values[np.isclose(np.asarray(p.iouThrs), iou)]
        values = values[values > -1]
        stats.append(float(values.mean()) if values.size else -1.0)
    return stats


def _positive_image_ids(dataset: dict[str, Any], results: list[dict[str, Any]]
                        ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, int]]:
    """The file and results with image ids renumbered 1..N in their order, and each new
    id's original: faster-coco-eval's segm scoring fails on negative ids, which
    pycocotools takes."""
    new = {old: i for i, old in enumerate(sorted(img["id"] for img in dataset["images"]),
                                          start=1)}
    dataset = {**dataset,
               "images": [{**img, "id": new[img["id"]]} for img in dataset["images"]],
               "annotations": [{**ann, "image_id": new[ann["image_id"]]}
                               for ann in dataset["annotations"]]}
    results = [{**r, "image_id": new[r["image_id"]]} for r in results]
    return dataset, results, {i: old for old, i in new.items()}


def _object_counts(coco_gt: Any) -> dict[tuple[int, int], int]:
    """{(image id, category id): non-crowd objects}."""
    counts: dict[tuple[int, int], int] = {}
    for ann in coco_gt.dataset["annotations"]:
        if not ann.get("iscrowd", 0):
            key = (ann["image_id"], ann["category_id"])
            counts[key] = counts.get(key, 0) + 1
    return counts


def _crowded_images(coco_gt: Any, counts: dict[tuple[int, int], int],
                    max_dets: int) -> list[tuple[int, str, int]]:
    """(image id, category name, objects) where an image holds more non-crowd objects of one
    category than COCOeval scores detections of it."""
    return sorted(((i, coco_gt.cats[c]["name"], n) for (i, c), n in counts.items()
                   if n > max_dets), key=lambda t: -t[2])


def _images_of_more_objects(counts: dict[tuple[int, int], int],
                            kept: int) -> list[tuple[int, int]]:
    """(image id, objects) where an image holds more non-crowd objects, of all categories
    together, than the model keeps detections of an image."""
    per_image: dict[int, int] = {}
    for (image_id, _), n in counts.items():
        per_image[image_id] = per_image.get(image_id, 0) + n
    return sorted(((i, n) for i, n in per_image.items() if n > kept), key=lambda t: -t[1])


def _warn_of_capped_results(results: Sequence[dict[str, Any]], max_dets: int,
                            ann_file: str | Path) -> None:
    """LVIS scores 300 detections per image: say so where the model kept fewer."""
    counts: dict[int, int] = {}
    for result in results:
        counts[result["image_id"]] = counts.get(result["image_id"], 0) + 1
    if max_dets < LVIS_MAX_DETS and counts and max(counts.values()) == max_dets:
        warnings.warn(f"{ann_file} is scored with LVIS's federated AP, of up to "
                      f"{LVIS_MAX_DETS} detections per image, but images have {max_dets} "
                      f"(model.roi_heads.detections_per_image; detectron2's LVIS configs keep "
                      f"{LVIS_MAX_DETS}): the AP may be lower than at {LVIS_MAX_DETS}",
                      RuntimeWarning, stacklevel=3)


def _percent(value: float) -> float:
    return float(value) * 100.0 if value >= 0 else math.nan  # COCOeval's -1: no ground truth


# the per-category columns: (name, IoU threshold or None for 0.50:0.95, COCOeval's area index
# of all, small, medium, large)
CATEGORY_COLUMNS = (("AP", None, 0), ("AP50", 0.5, 0), ("AP75", 0.75, 0), ("APs", None, 1),
                    ("APm", None, 2), ("APl", None, 3))


@collector_paused()
def evaluate_coco(ann_file: str | Path, results: list[dict[str, Any]], *, iou_type: str = "bbox",
                  backend: str = "pycocotools", verbose: bool = True,
                  max_dets: int = COCO_MAX_DETS,
                  kept_per_image: int | None = None,
                  categories: Sequence[int] | None = None) -> dict[str, Any]:
    """Score COCO results against a ground-truth file.

    Args:
        ann_file: ground-truth COCO instances JSON.
        results: COCO results entries (see `instances_to_coco_results`).
        iou_type: "bbox" or "segm".
        backend: "pycocotools" or "faster_coco_eval".
        verbose: print the 12 standard numbers and the per-category table.
        max_dets: detections scored per image and category (COCOeval's maxDets [1, 10, this];
            COCO's standard 100; more for scenes denser than that). An LVIS file is scored
            by LVIS's rules instead: 300 per image, all categories together.
        kept_per_image: the detections the model keeps of an image, all categories together
            (model.roi_heads.detections_per_image), to warn of images holding more objects.
        categories: score these category ids alone (data.classes; COCOeval's params.catIds,
            as mmdetection's CocoMetric sets them); None: every category of the file.

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl" (percent; NaN where the ground truth has no
        object of that size), "stats": the 12 COCOeval numbers (fractions, -1 = undefined),
        "per_category": {name: AP in percent, NaN for categories without ground truth};
        "name (id N)" where categories share a name}, and the same at IoU 0.5 and 0.75 and
        over small, medium and large objects as "per_category_AP50", "per_category_AP75",
        "per_category_APs", "per_category_APm" and "per_category_APl" (mmdetection's
        classwise table); for an LVIS file also "APr", "APc", "APf" (percent; NaN where no
        category of the group has ground truth).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    drop = "bbox" if iou_type == "segm" else "segmentation"
    # new dicts: loadRes and COCOeval set top-level keys of each entry ("id", "area",
    # "segmentation") and change nothing deeper, so the caller's results stay as they were
    # (a deep copy took 14 of 18 s of a segm evaluation's setup at COCO scale)
    results = [{k: v for k, v in r.items() if k != drop} for r in results]
    if iou_type == "segm" and any("segmentation" not in r for r in results):
        raise ValueError("segm evaluation needs a 'segmentation' in every result")
    dataset, ignored = ground_truth(Path(ann_file), iou_type, categories)
    if ignored:
        warnings.warn(f"{ann_file}: {len(ignored)} objects without a usable mask are ignored in "
                      f"the segm evaluation (scored as crowd regions over their boxes; "
                      f"annotation ids {brief(ignored, MAX_LISTED)})",
                      RuntimeWarning, stacklevel=2)
    if not results:
        warnings.warn(f"no detections to evaluate against {ann_file}: {iou_type} AP is 0",
                      RuntimeWarning, stacklevel=2)
    known = {img["id"] for img in dataset["images"]}
    unknown = sorted({r["image_id"] for r in results} - known)
    if unknown:
        raise ValueError(f"{len(unknown)} image ids of the results are not in {ann_file} "
                         f"(e.g. {unknown[:5]}): results of another split or file?")
    check_lvis_file(dataset, Path(ann_file), warn=iou_type == "bbox")
    federation = Federation.of(dataset, Path(ann_file)) if is_federated(dataset) else None
    both, lacking = partly_listed(dataset)
    if lacking:
        warnings.warn(f"{ann_file}: {both} of {len(dataset['images'])} images have both "
                      f"{' and '.join(IMAGE_LISTS)} ({lacking}); LVIS's federated AP needs "
                      f"both on every image, so the file is scored with COCO's AP",
                      RuntimeWarning, stacklevel=2)
    elif federation is None and any("frequency" in c for c in dataset["categories"]):
        warnings.warn(f"{ann_file}: its categories have LVIS's frequency, but no image has "
                      f"{' or '.join(IMAGE_LISTS)}: scored with COCO's AP, which counts every "
                      f"detection of a category not annotated on an image as a false one "
                      f"(LVIS's federated AP needs both lists on every image: a converter or "
                      f"subset that dropped them?)", RuntimeWarning, stacklevel=2)
    frequencies = {c["id"]: c.get("frequency") for c in dataset["categories"]}
    if federation is not None:
        _warn_of_capped_results(results, max_dets, ann_file)
        results, max_dets = federation.scored(results, iou_type), LVIS_MAX_DETS
    original_ids: dict[int, int] = {}
    if backend == "faster_coco_eval" and any(img["id"] < 0 for img in dataset["images"]):
        dataset, results, original_ids = _positive_image_ids(dataset, results)
    coco_gt = _load_gt(dataset, backend)
    counts = _object_counts(coco_gt) if federation is None else {}
    crowded = _crowded_images(coco_gt, counts, max_dets)
    dense = (_images_of_more_objects(counts, kept_per_image)
             if kept_per_image is not None else [])
    if dense:  # (the images of the warning below among them, with the same remedy)
        image_id, count = dense[0]
        warnings.warn(f"{ann_file}: {len(dense)} images hold more objects than the "
                      f"{kept_per_image} detections the model keeps of an image (image id "
                      f"{original_ids.get(image_id, image_id)}: {count} objects): their recall "
                      f"and AP are capped; raise model.roi_heads.detections_per_image",
                      RuntimeWarning, stacklevel=2)
    elif crowded:
        image_id, name, count = crowded[0]
        image_id = original_ids.get(image_id, image_id)
        warnings.warn(f"{ann_file}: {len(crowded)} images hold more objects of a category than "
                      f"the {max_dets} detections per image scored of it (image id {image_id}: "
                      f"{count} {name!r}): their AP is capped; raise "
                      f"model.roi_heads.detections_per_image (the detections scored follow it)",
                      RuntimeWarning, stacklevel=2)
    # (minutes at COCO train's scale, where nothing else is said)
    logger.info("scoring %d %s results on %d images (%s)", len(results), iou_type,
                len(dataset["images"]), backend)
    started = time.perf_counter()
    evaluator = _run_cocoeval(coco_gt, _load_results(coco_gt, results, backend), iou_type,
                              backend, max_dets, federation)
    logger.info("scored in %s", datetime.timedelta(seconds=round(time.perf_counter() - started)))
    stats = _stats(evaluator)
    metrics: dict[str, Any] = {name: _percent(stats[i]) for i, name in enumerate(METRIC_NAMES)}
    metrics["stats"] = stats
    # precision: (IoU thresholds, recall points, categories, areas, max dets); -1 = undefined
    precision = np.asarray(evaluator.eval["precision"])
    ious = np.asarray(evaluator.params.iouThrs)
    columns: dict[str, dict[str, float]] = {column: {} for column, _, _ in CATEGORY_COLUMNS}
    names = [coco_gt.cats[cat_id]["name"] for cat_id in evaluator.params.catIds]
    for k, (cat_id, name) in enumerate(zip(evaluator.params.catIds, names)):
        key = f"{name} (id {cat_id})" if names.count(name) > 1 else name
        for column, at, area in CATEGORY_COLUMNS:
            p = precision[:, :, k, area, -1]
            p = p if at is None else p[np.isclose(ious, at)]
            p = p[p > -1]
            columns[column][key] = float(p.mean()) * 100 if p.size else math.nan
    per_category = columns["AP"]
    metrics["per_category"] = per_category
    metrics.update({f"per_category_{column}": columns[column]
                    for column, _, _ in CATEGORY_COLUMNS[1:]})
    groups = (frequency_group_aps(precision, evaluator.params.catIds, frequencies)
              if federation is not None else {})
    metrics.update(groups)
    if verbose:
        print_and_log(format_summary(stats, per_category, iou_type, max_dets, groups,
                                     {k: v for k, v in columns.items() if k != "AP"}))
    return metrics


def format_summary(stats: Sequence[float], per_category: dict[str, float], iou_type: str,
                   max_dets: int = COCO_MAX_DETS,
                   frequency_aps: dict[str, float] | None = None,
                   more_columns: dict[str, dict[str, float]] | None = None) -> str:
    """pycocotools' 12-line summary (where LVIS's APr, APc, APf are given, an LVIS file's
    federated AP: those, and its 10 lines without COCO's recalls at 1 and 10) followed by a
    per-category AP table, with `more_columns` ({"AP50": {category: AP50}, ...}) beside the
    AP."""
    more_columns = more_columns or {}
    lines = [f"Evaluation results for {iou_type}"
             f"{' (LVIS federated AP, 300 detections per image)' if frequency_aps else ''}:"]
    for (is_precision, iou, area, dets), value in zip(_STAT_ROWS, stats):
        if frequency_aps and dets is not None:  # (COCO's recalls at 1 and 10: lvis-api has none)
            continue
        kind, short = ("Average Precision", "(AP)") if is_precision else ("Average Recall", "(AR)")
        iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(f" {kind:<18} {short} @[ IoU={iou_text:<9} | area={area:>6s} | "
                     f"maxDets={dets or max_dets:>3d} ] = {value:0.3f}")
    if frequency_aps:
        lines.append(" " + "  ".join(f"{name} = {value:0.1f}"
                                     for name, value in frequency_aps.items()) +
                     "  (rare, common, frequent categories; percent)")
    rows = list(per_category.items())
    if len(rows) > TABLE_CATEGORIES:  # LVIS: 1203 rows at every evaluation
        scored = sorted((r for r in rows if not math.isnan(r[1])), key=lambda r: r[1])
        shown, kept = (("the lowest and highest 10", scored[:10] + scored[-10:])
                       if len(scored) > 20 else ("those scored", scored))
        lines.append(f"per-category AP of {len(rows)} categories ({len(rows) - len(scored)} "
                     f"without ground truth): all in metrics.json; {shown}:")
        rows = kept
    width = max([len(name) for name, _ in rows] + [8])
    heads = ["AP", *more_columns]
    lines.append(f"{'category':<{width}} | " + " | ".join(f"{h:<6}" for h in heads).rstrip())
    lines.append(f"{'-' * width}-" + "|--------" * len(heads))
    lines += [f"{name:<{width}} | " + " | ".join(
        "   n/a" if math.isnan(value) else f"{value:6.2f}"
        for value in [ap, *(c[name] for c in more_columns.values())]) for name, ap in rows]
    return "\n".join(lines)


def coco_backend(cfg: Any) -> str:
    """The config's `data.val.coco_backend`, checked."""
    backend = cfg["data"]["val"]["coco_backend"]
    if backend not in BACKENDS:
        raise ConfigError(f"data.val.coco_backend must be one of {BACKENDS}, got {backend!r}")
    return backend


class COCOEvaluator:
    """Collect detections over a (possibly distributed) pass, then write and score them.

    Args:
        ann_file: ground-truth COCO instances JSON.
        category_ids: dataset category id of each contiguous label.
        output_dir: where coco_instances_results.json is written (None: not written).
        backend: "pycocotools" or "faster_coco_eval".
        iou_types: ("bbox",) or ("bbox", "segm").
        score: False writes the results alone (a file without annotations, e.g. test-dev).
        max_dets: detections scored per image and category (see `evaluate_coco`).
        kept_per_image: the detections the model keeps of an image (see `evaluate_coco`).
        voc_metric: also VOC's AP at IoU 0.5 ("11point" or "area": `voc_eval`), as "voc".
        scored_categories: score these category ids alone (data.classes; `evaluate_coco`'s
            categories).
    """

    def __init__(self, ann_file: str | Path, *, category_ids: Sequence[int],
                 output_dir: str | Path | None = None, backend: str = "pycocotools",
                 iou_types: Sequence[str] = ("bbox",), score: bool = True,
                 max_dets: int = COCO_MAX_DETS, kept_per_image: int | None = None,
                 voc_metric: str | None = None,
                 scored_categories: Sequence[int] | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if unknown:
            raise ValueError(f"unknown iou_types {unknown}; valid: {IOU_TYPES}")
        self.ann_file = Path(ann_file)
        self.category_ids = tuple(int(c) for c in category_ids)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.backend = backend
        self.iou_types = tuple(iou_types)
        self.score = score
        self.max_dets = max_dets
        self.kept_per_image = kept_per_image
        check_voc_metric(voc_metric)
        self.voc_metric = voc_metric
        self.scored_categories = scored_categories
        self._results: list[dict[str, Any]] = []
        self._said_of_the_file: set[str] = set()

    def reset(self) -> None:
        self._results = []

    def _warn_once_of_the_file(self, caught: Sequence[warnings.WarningMessage]) -> None:
        """Warn of `caught`, those about the val file itself (its lists, its dense images) at
        the first evaluation of a training alone: they were the same lines at every one."""
        for w in caught:
            text = str(w.message)
            if text.startswith(str(self.ann_file)):
                if text in self._said_of_the_file:
                    continue
                self._said_of_the_file.add(text)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def process(self, inputs: Sequence[dict[str, Any]], outputs: Sequence[dict[str, Any]]) -> None:
        """Add a batch.

        Args:
            inputs: samples with "image_id".
            outputs: per sample {"boxes", "scores", "labels"[, "masks"]} in original pixels,
                as the model gives them (labels 0..K-1, not a `Predictor`'s category ids;
                masks as `instances_to_coco_results` takes them).
        """
        for sample, out in zip(inputs, outputs, strict=True):
            self._results += instances_to_coco_results(
                sample["image_id"], out["boxes"], out["scores"], out["labels"],
                category_ids=self.category_ids,
                masks=out.get("masks") if "segm" in self.iou_types else None)

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Gather every rank's detections, write them, score them.

        Returns:
            {iou_type: metrics as from `evaluate_coco`, and "voc": `evaluate_voc`'s with
            `voc_metric`} on every rank ({} without `score`).
        """
        results = [r for part in all_gather_object(self._results) for r in part]

        def score() -> dict[str, dict[str, Any]]:
            metrics: dict[str, dict[str, Any]] = {}
            if self.output_dir is not None:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                (self.output_dir / RESULTS_FILE).write_text(json.dumps(results), encoding="utf-8")
            for iou_type in self.iou_types if self.score else ():
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    metrics[iou_type] = evaluate_coco(
                        self.ann_file, results, iou_type=iou_type, backend=self.backend,
                        max_dets=self.max_dets, kept_per_image=self.kept_per_image,
                        categories=self.scored_categories)
                self._warn_once_of_the_file(caught)
            if self.score and self.voc_metric is not None:
                metrics["voc"] = evaluate_voc(self.ann_file, results, mode=self.voc_metric,
                                              categories=self.scored_categories)
            return metrics
        return done_by_the_main_process(score, "score the detections")
