"""COCO error analysis (the COCO API's analyze(), Hoiem-style; mmdetection's
analysis_tools/coco_error_analysis.py): precision-recall curves that each forgive one more
kind of error, for all categories together and for each, at each object size.

  C75  PR at IoU 0.75 (the area under it: COCO's AP75)
  C50  PR at IoU 0.5 (AP50)
  Loc  PR at IoU 0.1: localisation errors forgiven (duplicates still false)
  Sim  and detections on an object of another class of the same supercategory forgiven
  Oth  and detections on an object of any other class forgiven
  BG   and detections on the background forgiven: precision 1 up to the recall reached
  FN   the objects never found: precision 1 up to recall 1

Sim and Oth score one category at a time against ground truth in which the objects of the
other classes (of its supercategory; all) are relabelled as it and marked crowd, COCOeval's
only way of ignoring an object: a detection on one of them is then neither right nor wrong. As
crowd regions they are matched by intersection over the detection's area and take any number of
detections, as in the references. Categories without a supercategory count as one, so their
Sim is their Oth; a category alone in its supercategory has Sim = Loc. Scored by COCO's rules
(pycocotools, at most `max_dets` detections per image and category), also for an LVIS file.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnet_detect.engine.files import atomic_write_figure, atomic_write_text, nan_to_none

from .evaluation import COCO_MAX_DETS, IOU_TYPES, _load_gt, _load_results, cocoeval_ground_truth

logger = logging.getLogger(__name__)

CURVES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
AREAS = ("all", "small", "medium", "large")  # COCOeval's area ranges, in its order
FOLDER, JSON_FILE = "error_analysis", "error_analysis.json"
PLOTTED_CATEGORIES = 80  # more (LVIS's 1203): the overall figures and the JSON alone


@dataclass
class ErrorAnalysis:
    """The curves of `analyze`; AP = the mean precision over the recall thresholds."""

    iou_type: str
    categories: list[dict[str, Any]]  # the file's, by id
    recall: np.ndarray  # (R,) COCOeval's recall thresholds 0, 0.01, ..., 1
    # (7 curves, R, K categories, 4 areas); NaN for a category without objects of that size
    precision: np.ndarray

    def overall(self) -> np.ndarray:
        """(7, R, 4): the mean over the categories that have objects of each size (COCOeval's
        mean), NaN for a size no category has."""
        found = ~np.isnan(self.precision[:1, :1])  # (1, 1, K, 4)
        count = found.sum(axis=2)
        total = np.where(found, self.precision, 0).sum(axis=2)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def names(self) -> list[str]:
        """Each category's name, "name (id N)" where categories share one."""
        names = [c["name"] for c in self.categories]
        return [f"{n} (id {c['id']})" if names.count(n) > 1 else n
                for n, c in zip(names, self.categories)]

    def aps(self) -> dict[str, Any]:
        """{"overall": {area: {curve: AP}}, "per_category": {name: {area: {curve: AP}}}},
        fractions, NaN where there are no objects of that size."""
        def table(curves: np.ndarray) -> dict[str, dict[str, float]]:  # (7, R, 4)
            ap = curves.mean(axis=1)
            return {area: {curve: float(ap[i, a]) for i, curve in enumerate(CURVES)}
                    for a, area in enumerate(AREAS)}
        return {"overall": table(self.overall()),
                "per_category": {name: table(self.precision[:, :, k])
                                 for k, name in enumerate(self.names())}}


def analyze(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], *,
            iou_type: str = "bbox", max_dets: int = COCO_MAX_DETS) -> ErrorAnalysis:
    """The error analysis of `results` against `gt`.

    Args:
        gt: a COCO dataset dict, as `read_coco_json` returns it (area and iscrowd may be
            left out, as in the evaluation).
        results: COCO results, with a "bbox" each (iou_type "bbox") or a "segmentation"
            each ("segm").
        iou_type: "bbox" or "segm".
        max_dets: detections scored per image and category.

    Raises:
        ValueError: an unknown iou_type, results lacking what it scores, or results of image
            ids the file lacks.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    key = "bbox" if iou_type == "bbox" else "segmentation"
    lacking = sum(key not in r for r in results)
    if lacking:
        raise ValueError(f"{iou_type} analysis needs a {key!r} in every result ({lacking} of "
                         f"{len(results)} have none)")
    dataset, _ = cocoeval_ground_truth(dict(gt), iou_type)
    unknown = {r["image_id"] for r in results} - {img["id"] for img in dataset["images"]}
    if unknown:
        raise ValueError(f"{len(unknown)} image ids of the results are not in the ground "
                         f"truth (e.g. {sorted(unknown)[:5]})")
    coco_gt = _load_gt(dataset, "pycocotools")
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    coco_dt = _load_results(coco_gt, [{k: v for k, v in r.items() if k != drop}
                                      for r in results], "pycocotools")
    categories = sorted(dataset["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    main = _precision(coco_gt, coco_dt, iou_type, [0.75, 0.5, 0.1], max_dets)  # (3, R, K, 4)
    recall = np.linspace(0.0, 1.0, main.shape[1])
    precision = np.zeros((len(CURVES), *main.shape[1:]))
    precision[:3] = main
    group = {c["id"]: c.get("supercategory") for c in categories}
    has_objects = (main[0, 0] > -1).any(axis=1)
    for k, cat_id in enumerate(ids):
        if not has_objects[k]:
            continue
        others = [i for i in ids if i != cat_id]
        oth = _forgiving(dataset, coco_dt, iou_type, max_dets, cat_id, others)
        similar = [i for i in others if group[i] == group[cat_id]]
        sim = (main[2, :, k] if not similar else oth if similar == others else
               _forgiving(dataset, coco_dt, iou_type, max_dets, cat_id, similar))
        precision[3, :, k], precision[4, :, k] = sim, oth
    precision[5] = precision[4] > 0
    precision[6] = 1.0
    precision[:, :, main[0, 0] == -1] = np.nan  # COCOeval's -1: no objects of that size
    return ErrorAnalysis(iou_type, categories, recall, precision)


def _precision(coco_gt: Any, coco_dt: Any, iou_type: str, iou_thrs: list[float],
               max_dets: int, cat_ids: list[int] | None = None) -> np.ndarray:
    """COCOeval's interpolated precision (IoU thresholds, R, K, 4 areas), -1 where a category
    has no objects of a size."""
    from pycocotools.cocoeval import COCOeval
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    evaluator.params.iouThrs = np.asarray(iou_thrs)
    evaluator.params.maxDets = [max_dets]
    if cat_ids is not None:
        evaluator.params.catIds = cat_ids
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return np.asarray(evaluator.eval["precision"])[..., 0]


def _forgiving(dataset: Mapping[str, Any], coco_dt: Any, iou_type: str, max_dets: int,
               cat_id: int, forgiven: list[int]) -> np.ndarray:
    """(R, 4): category `cat_id`'s precision at IoU 0.1 with the objects of the `forgiven`
    categories relabelled as it and ignored (crowd)."""
    forgiven_ids = set(forgiven)
    detected = set(coco_dt.catToImgs.get(cat_id, ()))  # elsewhere an ignored object changes nothing
    annotations = [a if a["category_id"] == cat_id else {**a, "category_id": cat_id, "iscrowd": 1}
                   for a in dataset["annotations"] if a["category_id"] == cat_id or (
                       a["category_id"] in forgiven_ids and a["image_id"] in detected)]
    coco_gt = _load_gt({**dataset, "annotations": annotations}, "pycocotools")
    return _precision(coco_gt, coco_dt, iou_type, [0.1], max_dets, [cat_id])[0, :, 0]


def overall_table(analysis: ErrorAnalysis) -> str:
    """The overall AP of each curve at each size, a row a size."""
    ap = analysis.overall().mean(axis=1)  # (7, 4)
    lines = [f"{'area':<8}" + "".join(f"{c:>7}" for c in CURVES)]
    for a, area in enumerate(AREAS):
        lines.append(f"{area:<8}" + "".join("      -" if np.isnan(v) else f"{v:7.3f}"
                                            for v in ap[:, a]))
    return "\n".join(lines)


def write_error_analysis(analysis: ErrorAnalysis, output: Path, *,
                         per_category: bool = True) -> list[Path]:
    """OUTPUT/error_analysis/<iou type>/ (bbox, segm: mmdetection's layout):
    error_analysis.json (`aps()`, null where undefined), overall-<area>.png for each size that
    has objects, and with `per_category`, where up to PLOTTED_CATEGORIES categories have
    objects, categories/<id>-<name>-<area>.png of each of those."""
    folder = Path(output) / FOLDER / analysis.iou_type
    folder.mkdir(parents=True, exist_ok=True)
    numbers = {"iou_type": analysis.iou_type, "curves": list(CURVES), **analysis.aps()}
    atomic_write_text(json.dumps(nan_to_none(numbers), indent=2) + "\n", folder / JSON_FILE)
    written = [folder / JSON_FILE]
    written += _plot(analysis, analysis.overall(), "overall", folder / "overall")
    # a category without objects has no curves: a file of LVIS's 1203 categories evaluated
    # on a few of them draws those few
    drawn = [k for k in range(len(analysis.categories))
             if not np.isnan(analysis.precision[0, 0, k]).all()]
    if per_category and len(drawn) > PLOTTED_CATEGORIES:
        logger.info("%d categories with objects: their figures are not drawn (up to %d), their "
                    "numbers are in %s", len(drawn), PLOTTED_CATEGORIES, JSON_FILE)
    elif per_category:
        (folder / "categories").mkdir(exist_ok=True)
        names = analysis.names()
        for k in drawn:
            category, name = analysis.categories[k], names[k]
            stem = f"{category['id']}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', category['name'])}"
            written += _plot(analysis, analysis.precision[:, :, k], name,
                             folder / "categories" / stem)
    return written


_COLOURS = ("#f7f7f7", "#c6dbef", "#6baed6", "#2171b5", "#fdae6b", "#e6550d", "#bdbdbd")


def _plot(analysis: ErrorAnalysis, curves: np.ndarray, title: str, stem: Path) -> list[Path]:
    """STEM-<area>.png of `curves` (7, R, 4) for each size with objects: the band between a
    curve and the one below it filled, the legend giving each curve's AP."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    written = []
    for a, area in enumerate(AREAS):
        if np.isnan(curves[0, 0, a]):
            continue
        figure, axes = plt.subplots(figsize=(6, 4.5))
        figure.subplots_adjust(left=0.1, right=0.96, bottom=0.11, top=0.93)
        below = np.zeros_like(analysis.recall)
        for i, curve in enumerate(CURVES):
            axes.plot(analysis.recall, curves[i, :, a], color="black", linewidth=0.5)
            axes.fill_between(analysis.recall, below, curves[i, :, a], color=_COLOURS[i],
                              label=f"[{curves[i, :, a].mean():.3f}] {curve}")
            below = curves[i, :, a]
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("recall")
        axes.set_ylabel("precision")
        axes.set_title(f"{analysis.iou_type} {title}: {area}")
        axes.legend(loc="lower left", fontsize=8)
        path = stem.with_name(f"{stem.name}-{area}.png")
        atomic_write_figure(figure, path)
        plt.close(figure)
        written.append(path)
    return written
