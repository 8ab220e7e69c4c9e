"""detection.voc_eval: Pascal VOC's AP at IoU 0.5 (the devkit's rules), on curves and files
worked out by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_detect.detection.evaluation import COCOEvaluator
from resnet_detect.detection.voc_eval import average_precision, evaluate_voc
from resnet_detect.engine.config import ConfigError

# recall and precision after each of: right, wrong, right (3 objects)
RECALL, PRECISION = np.array([1 / 3, 1 / 3, 2 / 3]), np.array([1.0, 0.5, 2 / 3])


def test_the_two_areas_under_a_curve() -> None:
    # area: 1/3 at precision 1, then 1/3 at 2/3, then nothing = 5/9
    assert average_precision(RECALL, PRECISION, "area") == pytest.approx(5 / 9)
    # 11 points: recall >= 0, .1, .2, .3 -> 1; .4, .5, .6 -> 2/3; .7 .. 1 -> 0 = 6/11
    assert average_precision(RECALL, PRECISION, "11point") == pytest.approx(6 / 11)
    # wrong, right, right: the precision at a recall is the best at it or beyond (2/3, not
    # the 1/2 reached first), so 2/3 over both thirds = 4/9; 11 points: 7 x 2/3 / 11
    recall, precision = np.array([0, 1 / 3, 2 / 3]), np.array([0, 0.5, 2 / 3])
    assert average_precision(recall, precision, "area") == pytest.approx(4 / 9)
    assert average_precision(recall, precision, "11point") == pytest.approx(14 / 33)


@pytest.fixture()
def gt_file(tmp_path: Path) -> Path:
    """Image 1: two cats (one difficult); image 2: two cats; a dog category without objects."""
    annotations = [
        {"image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"image_id": 1, "category_id": 7, "bbox": [50, 50, 10, 10], "iscrowd": 1},
        {"image_id": 2, "category_id": 7, "bbox": [20, 20, 10, 10], "iscrowd": 0},
        {"image_id": 2, "category_id": 7, "bbox": [70, 0, 10, 10], "iscrowd": 0},
    ]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 100}
                   for i in (1, 2)],
        "annotations": [{"id": k + 1, "area": 100.0, **a} for k, a in enumerate(annotations)],
        "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]}))
    return path


# by falling score: right; the same cat again (wrong); right; on the difficult cat (neither);
# a box overlapping the last cat by exactly 0.5 (right: the devkit's ovmax >= 0.5)
DETECTIONS = [
    (1, [0, 0, 10, 10], 0.9), (1, [1, 0, 10, 10], 0.8), (2, [20, 20, 10, 10], 0.7),
    (1, [50, 50, 10, 10], 0.6), (2, [70, 0, 10, 20], 0.5),
]


def _results() -> list[dict]:
    return [{"image_id": i, "category_id": 7, "bbox": b, "score": s} for i, b, s in DETECTIONS]


# recall 1/3, 1/3, 2/3, 1 at precision 1, 1/2, 2/3, 3/4: area 1/3 + 2 x 1/3 x 3/4 = 5/6;
# 11 points: 4 x 1 + 7 x 3/4 over 11 = 37/44
@pytest.mark.parametrize("mode, expected", [("area", 5 / 6), ("11point", 37 / 44)])
def test_the_devkit_s_rules_on_a_file(gt_file: Path, mode: str, expected: float) -> None:
    metrics = evaluate_voc(gt_file, _results(), mode=mode, verbose=False)
    assert metrics["per_category"]["cat"] == pytest.approx(100 * expected)
    assert math.isnan(metrics["per_category"]["dog"])  # no objects: not in the mean
    assert metrics["mAP"] == pytest.approx(100 * expected) and metrics["mode"] == mode
    # a detection of a category without objects changes nothing
    extra = _results() + [{"image_id": 1, "category_id": 9, "bbox": [0, 0, 5, 5], "score": 1.0}]
    assert evaluate_voc(gt_file, extra, mode=mode, verbose=False)["mAP"] == metrics["mAP"]


def test_a_difficult_flag_counts_where_the_object_is_not_a_crowd_region(gt_file: Path) -> None:
    """tools/voc_to_coco.py --keep-difficult: trained on (iscrowd 0), still VOC's difficult."""
    data = json.loads(gt_file.read_text(encoding="utf-8"))
    for ann in data["annotations"]:
        ann["difficult"], ann["iscrowd"] = ann["iscrowd"], 0
    gt_file.write_text(json.dumps(data), encoding="utf-8")
    metrics = evaluate_voc(gt_file, _results(), mode="area", verbose=False)
    assert metrics["mAP"] == pytest.approx(100 * 5 / 6)


def test_the_evaluator_adds_voc_s_numbers_when_asked(gt_file: Path) -> None:
    evaluator = COCOEvaluator(gt_file, category_ids=(7, 9), voc_metric="11point")
    boxes = {i: [[x, y, x + w, y + h] for j, (x, y, w, h), _ in DETECTIONS if j == i]
             for i in (1, 2)}
    scores = {i: [s for j, _, s in DETECTIONS if j == i] for i in (1, 2)}
    evaluator.process([{"image_id": 1}, {"image_id": 2}],
                      [{"boxes": torch.tensor(boxes[i], dtype=torch.float32),
                        "scores": torch.tensor(scores[i]),
                        "labels": torch.zeros(len(scores[i]), dtype=torch.int64)}
                       for i in (1, 2)])
    metrics = evaluator.evaluate()
    assert set(metrics) == {"bbox", "voc"}
    assert metrics["voc"]["mAP"] == pytest.approx(100 * 37 / 44)
    assert "voc" not in COCOEvaluator(gt_file, category_ids=(7, 9)).evaluate()
    with pytest.raises(ConfigError, match="data.val.voc_metric must be null or one of 11point, "
                                          "area .*got 'voc07'"):
        COCOEvaluator(gt_file, category_ids=(7, 9), voc_metric="voc07")
