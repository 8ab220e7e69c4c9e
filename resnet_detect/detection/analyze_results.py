"""A COCO results file image by image (tools/analyze_results.py; mmdetection's
analyze_results.py, detectron2's visualize_json_results.py): each image's AP as COCOeval
scores that image alone, the images ranked by it, and the best and worst drawn with their
ground truth beside the detections."""
from __future__ import annotations

import contextlib
import csv
import io
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from resnet_detect.engine.data.coco import check_segmentation, segmentation_to_rle
from resnet_detect.engine.files import atomic_write_text
from resnet_detect.engine.visualize import draw_detections, put_text, text_size

from .evaluation import COCO_MAX_DETS, _load_gt, _load_results

logger = logging.getLogger(__name__)

CSV_FILE = "per_image_ap.csv"
CAPTION_HEIGHT, GAP = 24, 6
JPEG_MAX_SIDE = 65500  # wider side by side: one above the other


@dataclass
class ImageScore:
    """One image's figures; the APs are fractions, None where the image has no object that
    COCOeval scores (none, or crowd regions only)."""
    image_id: int
    file_name: str
    objects: int  # not counting crowd regions
    detections: int
    ap: float | None
    ap50: float | None
    ap75: float | None


def _precision_at_recalls(entry: Mapping[str, Any], recall_thresholds: np.ndarray
                          ) -> np.ndarray | None:
    """(IoU thresholds, recall thresholds) interpolated precision of one image and category,
    as COCOeval.accumulate computes it over a set of images; None where the category has
    no object that counts (COCOeval's -1)."""
    objects = int(np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0))
    if objects == 0:
        return None
    matched = np.asarray(entry["dtMatches"]) != 0  # the matched object's id
    ignored = np.asarray(entry["dtIgnore"]).astype(bool)
    thresholds = len(matched)
    if matched.size == 0:
        return np.zeros((thresholds, len(recall_thresholds)))
    # detections are in score order already (evaluateImg sorts them and keeps maxDet)
    tp = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
    recall = tp / objects
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    out = np.zeros((thresholds, len(recall_thresholds)))
    for t in range(thresholds):
        at = np.searchsorted(recall[t], recall_thresholds, side="left")
        reached = at < recall.shape[1]
        out[t, reached] = precision[t, at[reached]]
    return out


def per_image_ap(gt: dict[str, Any], results: list[dict[str, Any]], *, iou_type: str = "bbox",
                 max_dets: int = COCO_MAX_DETS) -> list[ImageScore]:
    """Every image of `gt`'s figures, in the file's order.

    Args:
        gt: a COCO dataset as COCOeval reads it (evaluation.ground_truth's).
        results: COCO results of `gt`'s images (segmentations as compressed RLEs for segm).
        max_dets: detections scored per image and category.
    """
    from pycocotools.cocoeval import COCOeval
    coco_gt = _load_gt(gt, "pycocotools")
    evaluator = COCOeval(coco_gt, _load_results(coco_gt, results, "pycocotools"), iou_type)
    p = evaluator.params
    p.maxDets = [1, 10, max_dets]
    p.areaRng, p.areaRngLbl = p.areaRng[:1], p.areaRngLbl[:1]  # "all" alone: a quarter the time
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    ious, recalls = np.asarray(p.iouThrs), np.asarray(p.recThrs)
    # the IoU thresholds of AP, AP50 and AP75
    columns = [slice(None), np.isclose(ious, 0.5), np.isclose(ious, 0.75)]
    images = len(p.imgIds)
    # image by image, its categories' curves reduced to its three APs at once, and their
    # entries freed (every image's curves held to the end took 7 GB for COCO train's 120k)
    aps: dict[int, list[float | None]] = {}
    for i, image_id in enumerate(p.imgIds):
        curves = []
        for k in range(len(p.catIds)):  # evalImgs: by category, then image
            entry, evaluator.evalImgs[k * images + i] = evaluator.evalImgs[k * images + i], None
            curve = None if entry is None else _precision_at_recalls(entry, recalls)
            if curve is not None:
                curves.append(curve)
        found = np.stack(curves) if curves else None
        aps[image_id] = [None if found is None else float(found[:, column].mean())
                         for column in columns]
    objects: dict[int, int] = defaultdict(int)
    for ann in gt["annotations"]:
        objects[ann["image_id"]] += not ann.get("iscrowd", 0)
    detections: dict[int, int] = defaultdict(int)
    for r in results:
        detections[r["image_id"]] += 1
    scores = []
    for img in gt["images"]:
        scores.append(ImageScore(img["id"], img["file_name"], objects[img["id"]],
                                 detections[img["id"]], *aps.get(img["id"], [None] * 3)))
    return scores


def ranked(scores: Sequence[ImageScore], *, best: bool) -> list[ImageScore]:
    """The images with an AP, best (or worst) first; among equal APs, those of more objects
    first."""
    scored = [s for s in scores if s.ap is not None]
    return sorted(scored, key=lambda s: (-s.ap if best else s.ap, -s.objects, s.image_id))


def write_csv(scores: Sequence[ImageScore], path: Path) -> None:
    """The figures of every image, worst AP first, those without an AP last (APs in
    percent)."""
    def cell(value: Any) -> Any:
        return "" if value is None else f"{100 * value:.2f}" if isinstance(value, float) else value
    unscored = [s for s in scores if s.ap is None]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([f.name for f in fields(ImageScore)])
    for score in ranked(scores, best=False) + unscored:
        writer.writerow([cell(v) for v in astuple(score)])
    atomic_write_text(buffer.getvalue(), path)


def _objects(anns: Sequence[Mapping[str, Any]], names: Mapping[int, str],
             index: Mapping[int, int], size: tuple[int, int], masks: bool,
             scores: bool) -> dict[str, Any]:
    """draw_detections' input for annotations or results of one image."""
    boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    out: dict[str, Any] = {
        "boxes": boxes, "labels": np.asarray([index[a["category_id"]] for a in anns], dtype=int),
        "category_ids": [a["category_id"] for a in anns],
        "class_names": [names[a["category_id"]] + (" (crowd)" if a.get("iscrowd") else "")
                        for a in anns]}
    if scores:
        out["scores"] = np.asarray([a["score"] for a in anns], dtype=np.float64)
    if masks:  # RLEs: a large photo's objects as full-size bitmasks took gigabytes
        out["masks"] = [_mask(a.get("segmentation"), size) for a in anns]
    return out


def _mask(segmentation: Any, size: tuple[int, int]) -> dict[str, Any]:
    """The object's RLE; an empty one where it has no usable mask of the image's size (its
    box is drawn alone)."""
    height, width = size
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), bytes):
        # (the ground truth after a segm COCOeval: pycocotools writes its RLEs there)
        segmentation = {**segmentation, "counts": segmentation["counts"].decode("ascii")}
    try:  # (runs past or short of the image: pycocotools would read memory around the mask)
        segmentation = check_segmentation(segmentation, height, width)[0]
        return segmentation_to_rle(segmentation, height, width)
    except Exception:  # noqa: BLE001 (pycocotools raises a bare Exception for a bad polygon)
        pass
    return mask_utils.frPyObjects({"size": [height, width], "counts": [height * width]},
                                  height, width)


def _captioned(picture: np.ndarray, caption: str) -> np.ndarray:
    band = np.full((CAPTION_HEIGHT, picture.shape[1], 3), 255, dtype=np.uint8)
    _, height, base = text_size(caption, None)
    put_text(band, caption, (4, (CAPTION_HEIGHT + height) // 2 - base + 2), (0, 0, 0), None)
    return np.concatenate([band, picture])


def draw_side_by_side(image: np.ndarray, anns: Sequence[Mapping[str, Any]],
                      dets: Sequence[Mapping[str, Any]], score: ImageScore,
                      categories: Sequence[Mapping[str, Any]], colours: np.ndarray, *,
                      score_thr: float, masks: bool) -> np.ndarray:
    """The image's ground truth (left; above for very wide images) and its detections
    scoring `score_thr` or more (right; below), each under a caption; `categories` sorted by
    id, one colour each."""
    names = {c["id"]: c["name"] for c in categories}
    index = {c["id"]: i for i, c in enumerate(categories)}
    palette = {i: tuple(int(v) for v in rgb) for i, rgb in enumerate(colours)}
    shown = [d for d in dets if d["score"] >= score_thr and d["category_id"] in index]
    size = image.shape[:2]
    truth = draw_detections(image, _objects(anns, names, index, size, masks, scores=False),
                            palette, min_score=0.0)
    found = draw_detections(image, _objects(shown, names, index, size, masks, scores=True),
                            palette, min_score=score_thr)
    ap = ("no AP (no objects)" if score.ap is None else
          f"AP {100 * score.ap:.1f}, AP50 {100 * score.ap50:.1f}")
    left = _captioned(truth, f"ground truth: {score.objects} objects")
    right = _captioned(found, f"{len(shown)} detections >= {score_thr:g} ({ap})")
    if 2 * left.shape[1] + GAP > JPEG_MAX_SIDE:
        gap = np.full((GAP, left.shape[1], 3), 255, dtype=np.uint8)
        return np.concatenate([left, gap, right], axis=0)
    gap = np.full((left.shape[0], GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)
