"""detection.federated: LVIS's federated AP (lvis-api's rules) through evaluate_coco."""
from __future__ import annotations

import json
import warnings
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from resnet_detect.detection.evaluation import evaluate_coco
from resnet_detect.engine.data.coco import DatasetError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from lvis_api_parity import random_lvis  # noqa: E402

BACKENDS = ("pycocotools", "faster_coco_eval")
# A: rare, B and E: common, C and D: frequent
A, B, C, D, E = 1, 2, 3, 4, 5
FREQUENCY = {A: "r", B: "c", C: "f", D: "f", E: "c"}


def _box(x: float, y: float) -> list[float]:
    return [x, y, 40.0, 40.0]


def _rules_file(tmp_path: Path) -> Path:
    """Image 1: A and D annotated, D not in full, B checked absent, C not checked.
    Image 2: B and C annotated. Image 3: E annotated, nothing else checked."""
    gt = [(1, A, _box(10, 10)), (1, D, _box(100, 10)), (2, B, _box(10, 10)),
          (2, C, _box(100, 100)), (3, E, _box(50, 50))]
    images = [{"id": 1, "neg_category_ids": [B], "not_exhaustive_category_ids": [D]},
              {"id": 2, "neg_category_ids": [], "not_exhaustive_category_ids": []},
              {"id": 3, "neg_category_ids": [], "not_exhaustive_category_ids": []}]
    path = tmp_path / "lvis_rules.json"
    path.write_text(json.dumps({
        "images": [{**img, "file_name": f"{img['id']}.jpg", "height": 200, "width": 200}
                   for img in images],
        "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": box,
                         "area": 1600.0} for k, (i, c, box) in enumerate(gt)],
        "categories": [{"id": c, "name": f"cat{c}", "frequency": f}
                       for c, f in FREQUENCY.items()]}))
    return path


def _rules_results(unchecked_in_image_3: int) -> list[dict[str, Any]]:
    def det(image_id: int, category_id: int, box: list[float], score: float) -> dict[str, Any]:
        return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}
    return [det(1, A, _box(10, 10), 0.9),
            det(1, B, _box(150, 150), 0.95),  # B was checked absent in image 1: false positive
            det(2, B, _box(10, 10), 0.5),
            det(1, C, _box(150, 150), 0.95),  # C was not checked in image 1: dropped
            det(2, C, _box(100, 100), 0.5),
            det(1, D, _box(100, 10), 0.9),
            det(1, D, _box(10, 150), 0.95),  # D not annotated in full in image 1: ignored
            det(3, E, _box(50, 50), 0.5)] + [
            # image 3 was not checked for C: scored by nobody, yet they take the image's
            # 300 places before E's true positive when there are 300 of them
            det(3, C, _box(0, 0), 0.99) for _ in range(unchecked_in_image_3)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_federated_rule_scores_as_lvis_api_does(tmp_path: Path, backend: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    gt_file = _rules_file(tmp_path)
    metrics = evaluate_coco(gt_file, _rules_results(299), backend=backend)
    # a false positive above B's one true positive: precision 1/2 at every recall point
    assert metrics["per_category"] == pytest.approx(
        {"cat1": 100.0, "cat2": 50.0, "cat3": 100.0, "cat4": 100.0, "cat5": 100.0})
    assert metrics["AP"] == pytest.approx(90.0)
    assert (metrics["APr"], metrics["APc"], metrics["APf"]) == pytest.approx((100, 75, 100))
    out = capsys.readouterr().out
    assert "Evaluation results for bbox (LVIS federated AP, 300 detections per image):" in out
    assert "APr = 100.0  APc = 75.0  APf = 100.0" in out
    # lvis-api's recalls are at 300 alone: COCO's at 1 and 10 were printed under LVIS's title
    assert "maxDets=300 ] = " in out and "maxDets=  1" not in out and "maxDets= 10" not in out

    capped = evaluate_coco(gt_file, _rules_results(300), backend=backend, verbose=False)
    assert capped["per_category"]["cat5"] == pytest.approx(0.0)
    assert capped["per_category"]["cat3"] == pytest.approx(100.0)
    assert capped["AP"] == pytest.approx(70.0)
    assert capped["APc"] == pytest.approx(25.0)


def test_a_file_without_the_image_lists_is_scored_as_coco(tmp_path: Path) -> None:
    """The same data without neg/not-exhaustive lists: every detection counts (C's and D's
    false positives halve their AP; no 300 cap: E keeps its true positive)."""
    data = json.loads(_rules_file(tmp_path).read_text())
    for img in data["images"]:
        del img["neg_category_ids"], img["not_exhaustive_category_ids"]
    coco_file = tmp_path / "coco.json"
    coco_file.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="its categories have LVIS's frequency, but no image"):
        metrics = evaluate_coco(coco_file, _rules_results(0), verbose=False)
    assert metrics["per_category"] == pytest.approx(
        {"cat1": 100.0, "cat2": 50.0, "cat3": 50.0, "cat4": 50.0, "cat5": 100.0})
    assert "APr" not in metrics


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_both_backends_give_the_same_federated_numbers(tmp_path: Path, iou_type: str) -> None:
    """pycocotools with the not-exhaustive rule applied to its per-image results, and
    faster-coco-eval's own LVIS mode: two implementations, the same numbers (both equal
    lvis-api 0.5.3's on such sets: benchmarks/lvis_api_parity.py)."""
    data, results = random_lvis(0)  # 40 images, 20 categories
    gt_file = tmp_path / "lvis.json"
    gt_file.write_text(json.dumps(data))
    ours, faster = (evaluate_coco(gt_file, results, iou_type=iou_type, backend=backend,
                                  verbose=False) for backend in BACKENDS)
    assert ours["stats"] == pytest.approx(faster["stats"], abs=1e-12)
    assert [ours[k] for k in ("APr", "APc", "APf")] == pytest.approx(
        [faster[k] for k in ("APr", "APc", "APf")], abs=1e-10)
    assert ours["per_category"] == pytest.approx(faster["per_category"], abs=1e-10,
                                                 nan_ok=True)
    assert 5 < ours["AP"] < 95
    for img in data["images"]:
        del img["neg_category_ids"], img["not_exhaustive_category_ids"]
    gt_file.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="its categories have LVIS's frequency, but no image"):
        as_coco = evaluate_coco(gt_file, results, iou_type=iou_type, verbose=False)
    assert as_coco["AP"] < ours["AP"] - 1  # unchecked categories' detections counted


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("frequency", [None, "frequent", "rare "])
def test_a_category_without_a_frequency_is_refused(tmp_path: Path, backend: str,
                                                   frequency: str | None) -> None:
    """It was left out of APr/APc/APf without a word (APf of the file then another number);
    lvis-api, which detectron2 and mmdetection call, stops at it (KeyError)."""
    data = json.loads(_rules_file(tmp_path).read_text())
    category = next(c for c in data["categories"] if c["id"] == C)
    if frequency is None:
        del category["frequency"]
    else:
        category["frequency"] = frequency
    gt_file = tmp_path / "no_frequency.json"
    gt_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=re.escape(
            f"no_frequency.json: category id {C} ('cat{C}'): frequency must be 'r', 'c' or 'f' "
            f"(rare, common, frequent: APr, APc and APf group the categories by it), got "
            f"{frequency!r}")):
        evaluate_coco(gt_file, _rules_results(299), backend=backend, verbose=False)


def test_lists_naming_no_category_or_an_annotated_one_are_warned_of(tmp_path: Path) -> None:
    """Scored as lvis-api scores them (an unknown id changes nothing; a category listed absent
    that the image has objects of counts as annotated), and said: both hide annotation
    mistakes."""
    clean = evaluate_coco(_rules_file(tmp_path), _rules_results(0), verbose=False)
    data = json.loads(_rules_file(tmp_path).read_text())
    data["images"][1]["neg_category_ids"] = [9999, B]  # image 2 has B annotated
    data["images"][2]["not_exhaustive_category_ids"] = [5555]
    gt_file = tmp_path / "odd_lists.json"
    gt_file.write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        odd = evaluate_coco(gt_file, _rules_results(0), verbose=False)
    assert [str(w.message) for w in caught if "odd_lists.json" in str(w.message)] == [
        f"{gt_file}: 2 ids in the images' neg_category_ids / not_exhaustive_category_ids are "
        f"no category of the file (image id 2: 9999); they change no score",
        f"{gt_file}: 1 times an image lists a category as absent (neg_category_ids) that it "
        f"has objects of (image id 2: category {B}); scored as annotated, as lvis-api does"]
    assert odd["stats"] == clean["stats"]


@pytest.mark.parametrize("bad", [3, "3", [1, "2"], [True], None])
def test_an_image_list_that_is_not_category_ids_is_refused(tmp_path: Path, bad: Any) -> None:
    data = json.loads(_rules_file(tmp_path).read_text())
    data["images"][1]["not_exhaustive_category_ids"] = bad
    gt_file = tmp_path / "bad.json"
    gt_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=re.escape(
            f"bad.json: image id 2: not_exhaustive_category_ids must be a list of category "
            f"ids, got {bad!r}")):
        evaluate_coco(gt_file, _rules_results(0), verbose=False)


@pytest.mark.parametrize("first", [True, False])
def test_ties_at_the_300_cut_keep_the_results_order(tmp_path: Path, first: bool) -> None:
    """lvis-api's stable sort: among equal scores the earlier result is kept."""
    results = [r for r in _rules_results(0) if r["image_id"] != 3]
    tied = [{"image_id": 3, "category_id": C, "bbox": _box(0, 0), "score": 0.5}] * 300
    true_positive = {"image_id": 3, "category_id": E, "bbox": _box(50, 50), "score": 0.5}
    results += [true_positive, *tied] if first else [*tied, true_positive]
    metrics = evaluate_coco(_rules_file(tmp_path), results, verbose=False)
    assert metrics["per_category"]["cat5"] == pytest.approx(100.0 if first else 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crowd_flags_and_areas_of_zero_are_read_as_lvis_api_reads_them(
        tmp_path: Path, backend: str) -> None:
    """An undetected crowd-flagged A object is an object like any (A: recall 1/2, precision 1:
    51 of the 101 recall points); an object of area 0 (C in image 1) is none, so image 1 is
    not checked for C; a detection of area 0 is none (B's box of width 0 above its true
    positive)."""
    data = json.loads(_rules_file(tmp_path).read_text())
    data["annotations"] += [
        {"id": 90, "image_id": 1, "category_id": A, "bbox": _box(60, 100), "area": 1600.0,
         "iscrowd": 1},
        {"id": 91, "image_id": 1, "category_id": C, "bbox": _box(60, 150), "area": 0.0}]
    gt_file = tmp_path / "flags.json"
    gt_file.write_text(json.dumps(data))
    results = _rules_results(0) + [
        {"image_id": 2, "category_id": B, "bbox": [30.0, 30.0, 0.0, 20.0], "score": 0.99}]
    metrics = evaluate_coco(gt_file, results, backend=backend, verbose=False)
    assert metrics["per_category"] == pytest.approx(
        {"cat1": 100 * 51 / 101, "cat2": 50.0, "cat3": 100.0, "cat4": 100.0, "cat5": 100.0})


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_mask_is_no_detection_in_segm(tmp_path: Path, backend: str) -> None:
    polygon = [10.0, 10.0, 50.0, 10.0, 50.0, 50.0, 10.0, 50.0]
    gt_file = tmp_path / "segm.json"
    gt_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "height": 64, "width": 64,
                    "neg_category_ids": [], "not_exhaustive_category_ids": []}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": A, "bbox": [10, 10, 40, 40],
                         "area": 1600.0, "segmentation": [polygon]}],
        "categories": [{"id": A, "name": "cat1", "frequency": "r"}]}))
    empty = mask_utils.encode(np.zeros((64, 64), dtype=np.uint8, order="F"))
    full = mask_utils.merge(mask_utils.frPyObjects([polygon], 64, 64))
    results = [{"image_id": 1, "category_id": A, "score": score, "bbox": [10, 10, 40, 40],
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}
               for rle, score in ((empty, 0.9), (full, 0.5))]
    metrics = evaluate_coco(gt_file, results, iou_type="segm", backend=backend, verbose=False)
    assert metrics["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("federated", [True, False])
def test_results_of_images_not_in_the_file_are_refused(tmp_path: Path, federated: bool) -> None:
    data = json.loads(_rules_file(tmp_path).read_text())
    if not federated:
        for img in data["images"]:
            del img["neg_category_ids"], img["not_exhaustive_category_ids"]
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(data))
    results = _rules_results(0) + [{"image_id": 99, "category_id": A, "bbox": _box(0, 0),
                                    "score": 0.5}]
    with pytest.raises(ValueError, match=r"1 image ids of the results are not in .*gt.json "
                                         r"\(e.g. \[99\]\): results of another split"):
        evaluate_coco(gt_file, results, verbose=False)


def test_a_file_with_the_lists_on_some_images_only_is_scored_as_coco(tmp_path: Path) -> None:
    data = json.loads(_rules_file(tmp_path).read_text())
    for img in data["images"][1:]:
        del img["neg_category_ids"], img["not_exhaustive_category_ids"]
    gt_file = tmp_path / "partial.json"
    gt_file.write_text(json.dumps(data))
    del data["images"][0]["not_exhaustive_category_ids"]
    data["images"][1]["neg_category_ids"] = []  # images with one list: not counted as both
    gt_file.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match=r"partial.json: 0 of 3 images have both "
                                            r"neg_category_ids and not_exhaustive_category_ids "
                                            r"\(image id 1 lacks not_exhaustive_category_ids\); "
                                            r"LVIS's federated AP needs both on every image"):
        metrics = evaluate_coco(gt_file, _rules_results(0), verbose=False)
    assert metrics["per_category"]["cat3"] == pytest.approx(50.0)
    assert "APr" not in metrics
    # no image with a list (a converter that dropped them), the categories still LVIS's:
    # COCO's AP without a word
    for img in data["images"]:
        img.pop("neg_category_ids", None), img.pop("not_exhaustive_category_ids", None)
    gt_file.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match=r"partial.json: its categories have LVIS's "
                                            r"frequency, but no image has neg_category_ids or "
                                            r"not_exhaustive_category_ids: scored with COCO's AP"):
        assert evaluate_coco(gt_file, _rules_results(0), verbose=False) == metrics


def test_results_capped_below_lvis_300_are_named(tmp_path: Path) -> None:
    results = [r for r in _rules_results(0) if r["image_id"] != 3] + [
        {"image_id": 3, "category_id": C, "bbox": _box(0, 0), "score": 0.1}] * 100
    with pytest.warns(RuntimeWarning, match=r"of up to 300 detections per image, but images "
                                            r"have 100 \(model.roi_heads.detections_per_image"):
        evaluate_coco(_rules_file(tmp_path), results, verbose=False)
