"""Score a COCO results file that is already written (tools/eval.py --results): this
project's coco_instances_results.json, detectron2's or mmdetection's, against a config's
data.val.ann_file, without a model."""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_detect.engine import atomic_write_json
from resnet_detect.engine.config import is_number
from resnet_detect.engine.data import DatasetError, brief, image_sizes, read_coco_json
from resnet_detect.engine.data.coco import reaches_past
from resnet_detect.engine.data.coco import warn_of_boxes_beyond_images as warn_of_boxes
from resnet_detect.engine.files import missing_path, nan_to_none

from .config import load_config
from .data.splits import chosen_category_ids
from .evaluation import coco_backend, evaluate_coco
from .federated import is_federated
from .training import scored_detections
from .voc_eval import check_voc_metric, evaluate_voc

logger = logging.getLogger(__name__)
REQUIRED = ("image_id", "category_id", "score")


def read_results(path: Path) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The entries of a COCO results file and what they can be scored as: ("bbox",) and,
    where every entry has a mask, "segm" too ("segm" alone for masks without boxes).

    Raises:
        FileNotFoundError: no such file.
        DatasetError: not JSON, not a list of results, or an entry without the fields COCO's
            evaluation reads (named with its index).
    """
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {missing_path(path)}")
    try:
        results = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    if isinstance(results, dict):
        what = ("a COCO annotation file" if "annotations" in results else "a JSON object")
        raise DatasetError(f"{path} is {what}; a results file is a list of detections "
                           f"({{image_id, category_id, bbox, score}}, e.g. tools/eval.py's "
                           f"coco_instances_results.json)")
    if not isinstance(results, list):
        raise DatasetError(f"{path}: a results file is a JSON list of detections, got "
                           f"{type(results).__name__}")
    boxes, masks = True, 0
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise DatasetError(f"{path}: result {i} is not an object: {str(r)[:80]}")
        absent = [k for k in REQUIRED if k not in r]
        if absent:
            raise DatasetError(f"{path}: result {i} has no {', '.join(absent)}")
        if not all(is_number(r[k]) for k in REQUIRED) or not math.isfinite(r["score"]):
            raise DatasetError(f"{path}: result {i}: image_id, category_id and score must be "
                               f"numbers, got {({k: r[k] for k in REQUIRED})}")
        box = r.get("bbox")
        # (NaN passes pycocotools' IoU test: a NaN box matched every object)
        if box is not None and (not isinstance(box, list) or len(box) != 4
                                or not all(is_number(v) and math.isfinite(v) for v in box)
                                or min(box[2:]) < 0):
            raise DatasetError(f"{path}: result {i}: bbox must be [x, y, width, height], "
                               f"finite, width and height >= 0, got {box!r}")
        boxes &= box is not None
        masks += r.get("segmentation") is not None
    if results and not boxes and masks < len(results):
        raise DatasetError(f"{path}: results need a bbox each (result "
                           f"{_first_without(results, 'bbox')} has none) or a segmentation "
                           f"each (result {_first_without(results, 'segmentation')} has none)")
    if 0 < masks < len(results):
        logger.warning("%s: %d of %d results have no segmentation: mask AP is not scored, "
                       "box AP is", path, len(results) - masks, len(results))
    every_mask = masks == len(results) > 0
    return results, ("bbox",) * boxes + ("segm",) * every_mask


def rle_masks(results: list[dict[str, Any]], sizes: dict[int, tuple[int, int]],
              path: Path) -> list[dict[str, Any]]:
    """`results` with every segmentation as a compressed RLE of string counts, what
    pycocotools scores: polygons and uncompressed RLEs (counts a list) are encoded at their
    image's size (`sizes`: image id -> (height, width)); results of unknown images are left
    for the evaluation to name."""
    from pycocotools import mask as mask_utils
    encoded = []
    for i, r in enumerate(results):
        seg, size = r["segmentation"], sizes.get(r["image_id"])
        if isinstance(seg, dict) and isinstance(seg.get("counts"), str) or size is None:
            if size is not None and list(seg.get("size") or ()) != list(size):
                raise DatasetError(f"{path}: result {i}: a mask of size {seg.get('size')} on "
                                   f"image {r['image_id']} of size {list(size)} (height, "
                                   f"width)")
            encoded.append(r)
            continue
        try:
            if isinstance(seg, list):  # polygons, [[x1, y1, x2, y2, ...], ...]
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, *size))
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, *size)
            else:
                raise TypeError(type(seg).__name__)
        except (TypeError, ValueError, IndexError) as err:
            raise DatasetError(f"{path}: result {i}: segmentation must be polygons or an RLE "
                               f"({{size, counts}}), got {str(seg)[:80]} ({err})") from None
        encoded.append({**r, "segmentation": {"size": rle["size"],
                                              "counts": rle["counts"].decode("ascii")}})
    return encoded


def warn_of_detections_not_scored(results: list[dict[str, Any]], max_dets: int,
                                  path: Path) -> None:
    """COCOeval scores the `max_dets` best detections of each image and category: a file of
    a model keeping more (detections_per_image=300 given to the evaluation that wrote it, not
    to this one) scores lower than that evaluation did."""
    counts = Counter((r["image_id"], r["category_id"]) for r in results)
    if not counts:
        return
    (image_id, category_id), most = counts.most_common(1)[0]
    if most > max_dets:
        logger.warning("%s: %d results of image %s and category %s, and the COCO evaluation "
                       "scores the %d best of each image and category (model.roi_heads."
                       "detections_per_image=%d scores them all, as the evaluation of a model "
                       "keeping that many does)", path, most, image_id, category_id, max_dets,
                       most)


def warn_of_boxes_beyond_images(results: list[dict[str, Any]],
                                sizes: dict[Any, tuple[int, int]], path: Path) -> None:
    """`engine.data.coco.warn_of_boxes_beyond_images` of the results' boxes (`sizes`: image
    id -> (height, width)), which a detector's clipped boxes never set off. They are scored as
    they are."""
    boxed = [(r["bbox"], sizes[r["image_id"]]) for r in results
             if r.get("bbox") is not None and r["image_id"] in sizes]
    warn_of_boxes(sum(reaches_past(bbox, height=h, width=w) for bbox, (h, w) in boxed),
                  len(boxed), path, "COCO results are [x, y, width, height]")


def _first_without(results: list[dict[str, Any]], key: str) -> int:
    return next(i for i, r in enumerate(results) if r.get(key) is None)


def check_result_categories(results: list[dict[str, Any]], gt: dict[str, Any],
                            scored: Sequence[int] | None, path: Path, ann_file: Any) -> None:
    """Results that COCOeval would not score, for their category ids: those the val file
    lacks, and those of the categories data.classes leaves out (`scored`: the ids it keeps;
    None: all the file's), warned of; none left to score refused (an AP of 0 said nothing of
    results of another dataset's ids, 0-based labels or another subset).

    Raises:
        DatasetError: not one result is of a scored category.
    """
    names = {c["id"]: c["name"] for c in gt["categories"]}
    kept = set(names if scored is None else scored)
    counts = Counter(r["category_id"] for r in results)
    foreign = sorted(set(counts) - names.keys())
    left_out = sorted(set(counts) & names.keys() - kept)
    def named(ids: Sequence[int]) -> str:
        return brief([f"{names[i]}: {i}" for i in ids], 10)

    why = []
    if foreign:
        why.append(f"{sum(counts[i] for i in foreign)} have category ids {brief(foreign, 10)} "
                   f"that {ann_file} lacks")
    if left_out:
        why.append(f"{sum(counts[i] for i in left_out)} are of categories data.classes leaves "
                   f"out ({named(left_out)})")
    if not why:
        return
    hint = ("results of another dataset's ids, of 0-based labels, or of another data.classes "
            "subset?")
    if not kept & counts.keys():
        subset = ("" if scored is None else
                  f", the categories data.classes keeps ({named(sorted(kept))})")
        raise DatasetError(f"{path}: none of its {len(results)} results is of a category "
                           f"scored here{subset}: {'; '.join(why)} ({hint})")
    logger.warning("%s: of its %d results, %s; they are not scored (%s)", path, len(results),
                   "; ".join(why), hint)


def score_results_file(config: str, results_file: str, output: Path,
                       overrides: list[str] | tuple[str, ...] = (), *,
                       backend: str | None = None) -> dict[str, Any]:
    """COCO AP of `results_file` against the config's data.val.ann_file (box AP, and mask
    AP where every result has a segmentation); writes OUTPUT/metrics.json as
    tools/eval.py does, with "results" in place of "weights".

    Raises:
        ConfigError / DatasetError / FileNotFoundError: no val file, a val file without
            annotations, a malformed results file, or results of images the val file lacks.
    """
    cfg = load_config(config, overrides)
    backend = backend or coco_backend(cfg)
    voc_metric = cfg.data.val.get("voc_metric")
    check_voc_metric(voc_metric)
    ann_file = cfg.data.val.ann_file
    if not ann_file:
        raise DatasetError("data.val.ann_file must be set to score results against it")
    path = Path(results_file)
    results, types = read_results(path)
    gt = read_coco_json(ann_file, annotations_optional=True)
    if not gt["annotations"]:
        raise DatasetError(f"{ann_file} has no annotations: there is nothing to score "
                           f"{path} against")
    scored = chosen_category_ids(cfg, gt, ann_file)  # (data.classes': None without it)
    check_result_categories(results, gt, scored, path, ann_file)
    sizes = image_sizes(gt)
    warn_of_boxes_beyond_images(results, sizes, path)
    if "segm" in types:
        results = rle_masks(results, sizes, path)
    max_dets = scored_detections(cfg)
    if not is_federated(gt):  # (LVIS's AP scores 300 per image, whatever the config says)
        kept = None if scored is None else set(scored)
        warn_of_detections_not_scored([r for r in results if kept is None
                                       or r["category_id"] in kept], max_dets, path)
    metrics: dict[str, Any] = {}
    for iou_type in types:
        try:
            scores = evaluate_coco(ann_file, results, iou_type=iou_type, backend=backend,
                                   max_dets=max_dets, categories=scored)
        except DatasetError:  # the val file's own problem, named by it
            raise
        except ValueError as err:  # results of images the file lacks
            raise DatasetError(f"{path}: {err}") from None
        metrics[iou_type] = nan_to_none(scores)
    if voc_metric is not None and "bbox" in types:
        metrics["voc"] = nan_to_none(evaluate_voc(ann_file, results, mode=voc_metric,
                                                  categories=scored))
    elif voc_metric is not None:
        logger.warning("%s has masks without boxes: data.val.voc_metric (VOC's box AP) is not "
                       "scored", path)
    metrics["results"] = str(results_file)
    atomic_write_json(metrics, output / "metrics.json")
    def ap(value: float | None) -> str:  # (null: no object of the scored categories)
        return "n/a" if value is None else f"{value:.1f}"
    mask = f"  mask AP = {ap(metrics['segm']['AP'])}" if "segm" in metrics else ""
    box = f"box AP = {ap(metrics['bbox']['AP'])}" if "bbox" in metrics else ""
    voc = (f"  VOC mAP = {ap(metrics['voc']['mAP'])} ({voc_metric})" if "voc" in metrics
           else "")
    print(f"{box}{mask}{voc}".strip() + f"  (metrics: {output / 'metrics.json'})", flush=True)
    return metrics
