"""The COCO error analysis (mmdetection's coco_error_analysis.py): against COCOeval on random
data, and on a hand-made case whose curves are worked out by hand."""
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnet_detect.detection.error_analysis import (CURVES, ErrorAnalysis, analyze,
                                                    overall_table, write_error_analysis)
from resnet_detect.detection.evaluation import mask_to_rle

CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"},
              {"id": 2, "name": "dog", "supercategory": "animal"},
              {"id": 4, "name": "horse", "supercategory": "animal"},
              {"id": 5, "name": "car", "supercategory": "vehicle"},
              {"id": 9, "name": "bus", "supercategory": "vehicle"}]


def random_case(seed: int) -> tuple[dict, list[dict]]:
    """Objects of every size (some crowd) on 200x200 images, and detections near them (some of
    another class, of either supercategory) and on the background."""
    rng = np.random.default_rng(seed)
    ids = [c["id"] for c in CATEGORIES]
    annotations, results = [], []
    for image in range(1, 13):
        for _ in range(rng.integers(0, 6)):
            w, h = rng.choice([(6, 8), (20, 30), (90, 120)]) * rng.uniform(0.8, 1.2, 2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 200 - h)
            category = int(rng.choice(ids))
            annotations.append({"id": len(annotations) + 1, "image_id": image,
                                "category_id": category, "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": int(rng.random() < 0.1)})
            for _ in range(rng.integers(0, 3)):
                label = category if rng.random() < 0.6 else int(rng.choice(ids))
                jitter = rng.normal(0, 0.2, 4) * [w, h, w, h]
                results.append({"image_id": image, "category_id": label, "score": rng.random(),
                                "bbox": [x + jitter[0], y + jitter[1],
                                         max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]})
        for _ in range(rng.integers(0, 3)):  # on the background
            results.append({"image_id": image, "category_id": int(rng.choice(ids)),
                            "score": rng.random(),
                            "bbox": [*rng.uniform(0, 150, 2), *rng.uniform(4, 60, 2)]})
    gt = {"images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"}
                     for i in range(1, 13)],
          "annotations": annotations, "categories": CATEGORIES}
    return gt, results


def cocoeval_stats(gt: dict, results: list[dict], iou_type: str = "bbox") -> np.ndarray:
    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(json.loads(json.dumps(results))), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c75_and_c50_are_cocoeval_s_ap75_and_ap50_and_each_curve_forgives_more(
        seed: int) -> None:
    gt, results = random_case(seed)
    analysis = analyze(gt, results)
    stats = cocoeval_stats(gt, results)
    overall = analysis.aps()["overall"]["all"]
    assert overall["C75"] == pytest.approx(stats[2], abs=1e-12)
    assert overall["C50"] == pytest.approx(stats[1], abs=1e-12)
    assert overall["FN"] == 1.0
    # every category and size with objects: each curve at or above the one before
    aps = analysis.precision.mean(axis=1)  # (7, K, 4)
    defined = ~np.isnan(aps[0])
    assert defined.sum() >= 10
    assert (np.diff(aps[:, defined], axis=0) >= -1e-12).all()
    # the curves of Sim and Oth are the point-wise ones of forgiving more
    sim, oth = analysis.precision[3][:, defined], analysis.precision[4][:, defined]
    assert (analysis.precision[2][:, defined] <= sim + 1e-12).all() and (sim <= oth + 1e-12).all()
    # and forgive something on this data: a confusion within a supercategory, and across
    assert (aps[3, defined] > aps[2, defined]).any() and (aps[4, defined] > aps[3, defined]).any()


def test_box_analysis_of_masks_is_cocoeval_s_segm_ap() -> None:
    gt, results = random_case(3)
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x + w / 2, y + h * 0.8, x, y + h]]
        ann.pop("area")  # the mask's, as the evaluation reads it
    for r in results:
        mask = np.zeros((200, 200), dtype=np.uint8)
        x, y, w, h = (int(v) for v in r.pop("bbox"))
        mask[max(y, 0):y + h, max(x, 0):x + w] = 1
        r["segmentation"] = mask_to_rle(mask)
    with pytest.raises(ValueError, match="bbox analysis needs a 'bbox' in every result"):
        analyze(gt, results)
    overall = analyze(gt, results, iou_type="segm").aps()["overall"]["all"]
    from resnet_detect.detection.evaluation import cocoeval_ground_truth
    stats = cocoeval_stats(cocoeval_ground_truth(gt, "segm")[0], results, "segm")
    assert overall["C50"] == pytest.approx(stats[1], abs=1e-12) and stats[1] > 0.05
    assert overall["C75"] == pytest.approx(stats[2], abs=1e-12)
    # a malformed mask is named, one line per object (it was a list's repr)
    gt["annotations"][0]["segmentation"] = [[1, 2, 3, 4, 5, 6, 7]]
    with pytest.raises(ValueError) as refused:
        analyze(gt, results, iou_type="segm")
    assert str(refused.value) == (
        f"1 problem(s):\n  annotation id={gt['annotations'][0]['id']} (image id="
        f"{gt['annotations'][0]['image_id']}): a polygon holds an odd count of numbers (7), "
        f"not x, y pairs: [1, 2, 3, 4, 5, 6, 7]")
    import pickle  # (passed between processes whole: it garbled its lines)
    assert str(pickle.loads(pickle.dumps(refused.value))) == str(refused.value)


def test_perfect_detections_score_one_on_every_curve() -> None:
    gt, _ = random_case(0)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 0.5} for a in gt["annotations"] if not a["iscrowd"]]
    aps = analyze(gt, perfect).aps()
    assert aps["overall"]["all"] == dict.fromkeys(CURVES, 1.0)
    values = [v for areas in (aps["overall"], *aps["per_category"].values())
              for curves in areas.values() for v in curves.values()]
    defined = [v for v in values if not np.isnan(v)]
    assert len(defined) >= 7 * 15 and np.allclose(defined, 1.0, rtol=0, atol=1e-12)


def _box(image: int, category: int, box: list[float], score: float | None = None) -> dict:
    if score is None:
        return {"image_id": image, "category_id": category, "bbox": box, "iscrowd": 0,
                "area": box[2] * box[3]}
    return {"image_id": image, "category_id": category, "bbox": box, "score": score}


# Three cats, a dog (cat's supercategory) and a car (another), one a 100x100 image each; no
# bus.
HAND_GT = {
    "images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"}
               for i in range(1, 7)],
    "categories": [{"id": 1, "name": "cat", "supercategory": "animal"},
                   {"id": 2, "name": "dog", "supercategory": "animal"},
                   {"id": 3, "name": "car", "supercategory": "vehicle"},
                   {"id": 4, "name": "bus", "supercategory": "vehicle"}],
    "annotations": [{"id": i, **a} for i, a in enumerate([
        _box(1, 1, [0, 0, 10, 10]), _box(2, 2, [0, 0, 10, 10]), _box(3, 3, [0, 0, 10, 10]),
        _box(4, 1, [0, 0, 10, 10]), _box(6, 1, [0, 0, 10, 10])], start=1)],
}
# cat detections, best first: on the background, on cat 1 at IoU 80/120, on the dog, on the
# car, on cat 4 at IoU 50/150; cat 6 is never found
HAND_RESULTS = [_box(5, 1, [0, 0, 10, 10], 0.95), _box(1, 1, [2, 0, 10, 10], 0.9),
                _box(2, 1, [0, 0, 10, 10], 0.8), _box(3, 1, [0, 0, 10, 10], 0.7),
                _box(4, 1, [5, 0, 10, 10], 0.6)]
# COCO's interpolated precision at the recall thresholds 0, 0.01, ..., 1 (101): 34 of them
# reach recall 1/3 (up to 0.33), 67 recall 2/3 (up to 0.66). With F a false detection, T a
# true one and - one forgiven:
#   C75  F F F F F       precision 0
#   C50  F T F F F       1/2 up to 1/3 recall
#   Loc  F T F F T       1/2 up to 1/3 recall, 2/5 to 2/3
#   Sim  F T - F T       1/2 up to 2/3
#   Oth  F T - - T       2/3 up to 2/3
#   BG   (Oth without F) 1 up to 2/3
HAND_CAT = {"C75": 0.0, "C50": 34 * 0.5 / 101, "Loc": (34 * 0.5 + 33 * 0.4) / 101,
            "Sim": 67 * 0.5 / 101, "Oth": 67 * (2 / 3) / 101, "BG": 67 / 101, "FN": 1.0}


def test_a_hand_made_case_has_the_curves_worked_out_by_hand() -> None:
    aps = analyze(HAND_GT, HAND_RESULTS).aps()
    cat = aps["per_category"]["cat"]
    assert cat["all"] == pytest.approx(HAND_CAT, abs=1e-12)
    assert cat["small"] == pytest.approx(HAND_CAT, abs=1e-12)  # all 10x10
    assert all(np.isnan(v) for v in cat["medium"].values())  # no such objects
    # the dog and the car are never found: 0 up to FN; overall is the mean of the three (the bus
    # has no objects: no curves, and left out)
    for name in ("dog", "car"):
        assert aps["per_category"][name]["all"] == {**dict.fromkeys(CURVES, 0.0), "FN": 1.0}
    assert aps["overall"]["all"] == pytest.approx(
        {c: (v + (c == "FN") * 2) / 3 for c, v in HAND_CAT.items()}, abs=1e-12)
    assert all(np.isnan(v) for v in aps["overall"]["large"].values())
    assert all(np.isnan(v) for v in aps["per_category"]["bus"]["all"].values())
    # a cat alone in its supercategory: Sim forgives nothing more than Loc
    alone = {**HAND_GT, "categories": [{**c, "supercategory": "pet"} if c["name"] == "dog" else c
                                       for c in HAND_GT["categories"]]}
    cat = analyze(alone, HAND_RESULTS).aps()["per_category"]["cat"]["all"]
    assert cat == pytest.approx({**HAND_CAT, "Sim": HAND_CAT["Loc"]}, abs=1e-12)
    # without supercategories all classes are one: the car is forgiven in Sim too
    flat = {**HAND_GT, "categories": [{k: v for k, v in c.items() if k != "supercategory"}
                                      for c in HAND_GT["categories"]]}
    cat = analyze(flat, HAND_RESULTS).aps()["per_category"]["cat"]["all"]
    assert cat == pytest.approx({**HAND_CAT, "Sim": HAND_CAT["Oth"]}, abs=1e-12)


def test_the_files_hold_the_numbers(tmp_path: Path) -> None:
    analysis = analyze(HAND_GT, HAND_RESULTS)
    written = write_error_analysis(analysis, tmp_path)
    folder = tmp_path / "error_analysis/bbox"
    # figures only for the sizes with objects: all 10x10
    assert sorted(p.relative_to(folder).as_posix() for p in written) == sorted(
        ["error_analysis.json", "overall-all.png", "overall-small.png",
         *(f"categories/{c}-{a}.png" for c in ("1-cat", "2-dog", "3-car")
           for a in ("all", "small"))])
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written if p.suffix == ".png")
    numbers = json.loads((folder / "error_analysis.json").read_text())
    assert numbers["curves"] == list(CURVES) and numbers["iou_type"] == "bbox"
    assert numbers["per_category"]["cat"]["all"] == pytest.approx(HAND_CAT, abs=1e-12)
    assert numbers["overall"]["medium"] == dict.fromkeys(CURVES)  # null: no medium objects
    table = overall_table(analysis)
    assert table.splitlines()[1].split() == ["all", *(f"{(v + 2 * (c == 'FN')) / 3:.3f}"
                                                      for c, v in HAND_CAT.items())]
    assert table.splitlines()[3].split() == ["medium", *"-" * 7]


def test_more_than_80_categories_get_the_overall_figures_alone(tmp_path: Path) -> None:
    categories = [{"id": i, "name": f"c{i}"} for i in range(81)]
    precision = np.ones((7, 101, 81, 4))
    written = write_error_analysis(
        ErrorAnalysis("bbox", categories, np.linspace(0, 1, 101), precision), tmp_path)
    assert sorted(p.name for p in written) == ["error_analysis.json", "overall-all.png",
                                               "overall-large.png", "overall-medium.png",
                                               "overall-small.png"]
    assert not (tmp_path / "error_analysis/bbox/categories").exists()


def test_only_categories_with_objects_count_toward_the_figures_limit(tmp_path: Path) -> None:
    """300 categories, 2 with objects (a trial's file): no category figure was drawn; the two
    are."""
    categories = [{"id": i, "name": f"c{i}"} for i in range(300)]
    precision = np.full((7, 101, 300, 4), np.nan)
    precision[:, :, [4, 210], 0] = 1.0  # objects of the "all" size range only
    written = write_error_analysis(
        ErrorAnalysis("bbox", categories, np.linspace(0, 1, 101), precision), tmp_path)
    assert sorted(p.name for p in written) == ["210-c210-all.png", "4-c4-all.png",
                                               "error_analysis.json", "overall-all.png"]
