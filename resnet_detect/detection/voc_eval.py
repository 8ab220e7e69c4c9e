"""Pascal VOC's detection AP (the devkit's VOCevaldet; detectron2's PascalVOCDetectionEvaluator
and mmdetection's VOC mAP compute the same), on a COCO file made by tools/voc_to_coco.py: its
crowd regions are VOC's difficult objects.

Per category, the detections of every image are taken from the highest score down (equal
scores in the order given, as the devkit's stable sort); one whose best overlap with a
ground-truth box of its image and category is 0.5 or more (the devkit's and mmdetection's
rule; detectron2 wants more than 0.5) is a true positive if that box is not yet taken, a false
positive if it is, and neither if the box is difficult; any other detection is a false
positive. A difficult box is an annotation's `difficult` flag (tools/voc_to_coco.py
--keep-difficult writes it), else its `iscrowd` (any crowd region counts so). AP is the area under
the precision/recall curve: `11point` (VOC2007's: the mean of the best precision at recall
>= 0, 0.1, ..., 1) or `area` (VOC2010 on: every recall step, precision made monotone). Boxes are
in continuous pixel coordinates, as the COCO file holds them: the devkit's "+ 1" on 1-based
inclusive indices gives the same overlaps.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import read_coco_json
from resnet_detect.engine.data.coco import only_categories
from resnet_detect.engine.logging import print_and_log

from .overlaps import box_overlaps

VOC_MODES = ("11point", "area")
IOU_THRESHOLD = 0.5


def check_voc_metric(value: Any) -> None:
    """data.val.voc_metric: null, or one of VOC_MODES."""
    if value is not None and value not in VOC_MODES:
        raise ConfigError(f"data.val.voc_metric must be null or one of {', '.join(VOC_MODES)} "
                          f"(11point: VOC2007's, area: VOC2010 on), got {value!r}")


def average_precision(recall: np.ndarray, precision: np.ndarray, mode: str) -> float:
    """The area under a precision/recall curve (detections by falling score)."""
    if mode == "11point":
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0.0, 1.0, 11)]))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # the best precision at this recall or more
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def category_ap(detections: Sequence[dict[str, Any]],
                truths: dict[int, tuple[np.ndarray, np.ndarray]], mode: str) -> float:
    """AP of one category: `detections` COCO results entries, `truths` {image id: (boxes
    xyxy (N, 4), difficult (N,) bool)}; NaN without a ground-truth box that is not difficult."""
    positives = sum(int((~difficult).sum()) for _, difficult in truths.values())
    if positives == 0:
        return math.nan
    order = sorted(range(len(detections)), key=lambda i: -detections[i]["score"])  # stable
    taken = {image: np.zeros(len(boxes), bool) for image, (boxes, _) in truths.items()}
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, i in enumerate(order):
        det = detections[i]
        x, y, w, h = det["bbox"]
        boxes, difficult = truths.get(det["image_id"], (np.zeros((0, 4)), np.zeros(0, bool)))
        overlaps = box_overlaps(np.array([[x, y, x + w, y + h]]), boxes)[0]
        best = int(overlaps.argmax()) if len(overlaps) else -1
        if best < 0 or not overlaps[best] >= IOU_THRESHOLD:
            fp[rank] = 1
        elif difficult[best]:
            continue
        elif not taken[det["image_id"]][best]:
            tp[rank] = taken[det["image_id"]][best] = 1
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return average_precision(recall, precision, mode)


def evaluate_voc(ann_file: str | Path, results: Sequence[dict[str, Any]], *, mode: str,
                 verbose: bool = True, categories: Sequence[int] | None = None
                 ) -> dict[str, Any]:
    """VOC's AP at IoU 0.5 of COCO results against a COCO file (crowd = difficult).

    Returns:
        {"mAP": the mean over the categories with ground truth (percent), "per_category":
        {name: AP percent, NaN without ground truth}, "mode": mode}.
    """
    check_voc_metric(mode)
    data = read_coco_json(ann_file)
    if categories is not None:  # (data.classes: these alone)
        data = only_categories(data, categories)
    truths: dict[int, dict[int, list[tuple[list[float], bool]]]] = defaultdict(
        lambda: defaultdict(list))
    for ann in data["annotations"]:
        x, y, w, h = (float(v) for v in ann["bbox"])
        difficult = ann.get("difficult", ann.get("iscrowd", 0))
        truths[ann["category_id"]][ann["image_id"]].append(([x, y, x + w, y + h],
                                                            bool(difficult)))
    by_category: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        by_category[result["category_id"]].append(result)
    per_category = {}
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    for category in categories:
        images = {image: (np.array([b for b, _ in objs], np.float64).reshape(-1, 4),
                          np.array([d for _, d in objs], bool))
                  for image, objs in truths[category["id"]].items()}
        ap = category_ap(by_category[category["id"]], images, mode)
        name = category["name"]
        per_category[f"{name} (id {category['id']})" if names.count(name) > 1 else name] = \
            ap * 100
    scored = [v for v in per_category.values() if not math.isnan(v)]
    metrics = {"mAP": float(np.mean(scored)) if scored else math.nan,
               "per_category": per_category, "mode": mode}
    if verbose:
        width = max([len(n) for n in per_category] + [8])
        lines = [f"VOC AP at IoU 0.5 ({mode}): mAP = {metrics['mAP']:.2f}",
                 f"{'category':<{width}} | AP50", f"{'-' * width}-|-------"]
        lines += [f"{name:<{width}} | {ap:6.2f}" for name, ap in per_category.items()]
        print_and_log("\n".join(lines))
    return metrics
