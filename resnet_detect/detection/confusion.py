"""A detection confusion matrix (mmdetection's analysis_tools/confusion_matrix.py): which
classes the detector takes for which, what it misses and what it finds in the background.

Rows are the objects' classes then "background", columns the detected classes then
"background". In each image, every detection scoring at least `score_thr` is set against
every object it overlaps by an IoU of at least `iou_thr`: one count in (object's class,
detection's class) per such pair, the diagonal being right; a detection overlapping no object
counts in (background, its class), unless it lies on a crowd region (by intersection over its
own area, as COCOeval ignores it there); an object that no detection of its class overlaps
counts in (its class, background). An LVIS file (images listing the categories checked for)
is read as its federated AP reads it: a detection of a category the image was not checked for
counts nowhere, nor one overlapping no object of a category not annotated in full there; no
object is a crowd region.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet_detect.engine.confusion_files import write_confusion_files
from resnet_detect.engine.data.coco import IMAGE_LISTS, is_federated

from .overlaps import box_overlaps

BACKGROUND = "background"


def _xyxy(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def confusion_matrix(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], *,
                     score_thr: float = 0.3, iou_thr: float = 0.5
                     ) -> tuple[np.ndarray, list[str]]:
    """(K+1, K+1) int64 counts and the K class names then "background", the classes in
    the order of their category ids.

    Args:
        gt: a COCO dataset dict (images, annotations, categories).
        results: COCO results ({"image_id", "category_id", "bbox" xywh, "score"}).
    """
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    k = len(categories)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    objects: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for ann in gt["annotations"]:
        objects[ann["image_id"]].append(ann)
    found: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for r in results:
        if r["score"] >= score_thr and r["category_id"] in index:
            found[r["image_id"]].append(r)
    federated = is_federated(gt)
    for image in gt["images"]:
        anns = objects.get(image["id"], [])
        dets = found.get(image["id"], [])
        crowd = [] if federated else [a for a in anns if a.get("iscrowd", 0)]
        regular = [a for a in anns if federated or not a.get("iscrowd", 0)]
        not_exhaustive: set[Any] = set()
        if federated:
            negative, not_exhaustive = (set(image[key]) for key in IMAGE_LISTS)
            checked = negative | {a["category_id"] for a in anns}
            dets = [d for d in dets if d["category_id"] in checked]
        gt_classes = np.asarray([index[a["category_id"]] for a in regular], dtype=np.int64)
        det_classes = np.asarray([index[d["category_id"]] for d in dets], dtype=np.int64)
        det_boxes = _xyxy([d["bbox"] for d in dets])
        hits = box_overlaps(det_boxes, _xyxy([a["bbox"] for a in regular])) >= iou_thr
        on_crowd = (box_overlaps(det_boxes, _xyxy([a["bbox"] for a in crowd]), over_a=True)
                    >= iou_thr).any(axis=1)
        for d, j in zip(*np.nonzero(hits)):
            matrix[gt_classes[j], det_classes[d]] += 1
        background = ~hits.any(axis=1) & ~on_crowd & ~np.isin(
            [d["category_id"] for d in dets], list(not_exhaustive))
        np.add.at(matrix[k], det_classes[background], 1)
        found_right = (hits & (det_classes[:, None] == gt_classes[None, :])).any(axis=0)
        np.add.at(matrix[:, k], gt_classes[~found_right], 1)
    return matrix, [c["name"] for c in categories] + [BACKGROUND]


def write_confusion_matrix(matrix: np.ndarray, names: Sequence[str], folder: Path) -> list[Path]:
    """FOLDER/confusion_matrix.csv (counts) and, where up to PLOTTED_CLASSES classes have
    objects or detections, FOLDER/confusion_matrix.png of those and the background (each row
    in percent of its objects)."""
    return write_confusion_files(matrix, names, folder, predicted="detected",
                                 title="detections per object class (% of the row)",
                                 always_drawn=[len(names) - 1])


def most_confused(matrix: np.ndarray, names: Sequence[str], count: int = 5) -> list[str]:
    """A title line and the `count` largest counts off the diagonal: "dog detected as cat:
    12", "dog missed: 7", "background detected as cat: 5"."""
    k = len(names) - 1
    cells = [(int(matrix[i, j]), i, j) for i in range(k + 1) for j in range(k + 1)
             if i != j and matrix[i, j]]
    title = (f"the {count} largest of {len(cells)} confusions (all in the CSV):"
             if len(cells) > count else f"the {len(cells)} confusions:")
    return [title] + [f"  {names[i]} {'missed' if j == k else f'detected as {names[j]}'}: "
                      f"{value}" for value, i, j in sorted(cells, key=lambda c: -c[0])[:count]]
