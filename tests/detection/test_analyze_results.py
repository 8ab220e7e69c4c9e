"""Per-image AP (tools/analyze_results.py): each image's AP is what pycocotools' COCOeval
gives that image alone."""
from __future__ import annotations

import contextlib
import csv
import io
import tracemalloc

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnet_detect.detection.analyze_results import (ImageScore, draw_side_by_side,
                                                     per_image_ap, ranked, write_csv)
from resnet_detect.engine.visualize import palette

CATEGORIES = [{"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]


def random_set(seed: int) -> tuple[dict, list[dict]]:
    """Images of 0-6 objects (some crowd, sizes across COCO's small/medium/large) and
    detections near them, shifted, of other classes, or anywhere."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for i in range(12):
        image_id = 100 + 7 * i
        images.append({"id": image_id, "file_name": f"{i}.jpg", "height": 480, "width": 640})
        for _ in range(rng.integers(0, 7)):
            w, h = rng.uniform(8, 200, size=2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            cat = int(rng.choice([c["id"] for c in CATEGORIES]))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(rng.random() < 0.1)})
            for _ in range(rng.integers(0, 3)):
                jitter = rng.normal(0, 0.15, size=4) * [w, h, w, h]
                other = rng.random() < 0.2
                results.append({"image_id": image_id, "score": float(rng.random()),
                                "category_id": int(rng.choice([2, 5, 9])) if other else cat,
                                "bbox": [x + jitter[0], y + jitter[1], max(1, w + jitter[2]),
                                         max(1, h + jitter[3])]})
        for _ in range(rng.integers(0, 3)):
            results.append({"image_id": image_id, "category_id": int(rng.choice([2, 5, 9])),
                            "score": float(rng.random()), "bbox": [*rng.uniform(0, 400, 2),
                                                                   *rng.uniform(5, 100, 2)]})
    # an image of a crowd region alone and one of nothing, both with a detection: no AP
    for image_id, crowd in ((998, 1), (999, 0)):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 480,
                       "width": 640})
        anns += [{"id": len(anns) + 1, "image_id": image_id, "category_id": 2,
                  "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 1}][:crowd]
        results.append({"image_id": image_id, "category_id": 2, "bbox": [100, 100, 20, 20],
                        "score": 0.5})
    return {"images": images, "annotations": anns, "categories": CATEGORIES}, results


def cocoeval_of_one_image(gt: dict, results: list[dict], image_id: int) -> list[float]:
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.params.imgIds = [image_id]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats[:3])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_images_ap_is_cocoevals_of_that_image_alone(seed: int) -> None:
    gt, results = random_set(seed)
    scores = per_image_ap(gt, results)
    assert [s.image_id for s in scores] == [img["id"] for img in gt["images"]]
    scored = 0
    for s in scores:
        ap, ap50, ap75 = cocoeval_of_one_image(gt, results, s.image_id)
        assert s.objects == sum(a["image_id"] == s.image_id and not a["iscrowd"]
                                for a in gt["annotations"])
        assert s.detections == sum(r["image_id"] == s.image_id for r in results)
        if ap == -1:  # no object COCOeval scores
            assert s.ap is None and s.ap50 is None and s.ap75 is None
            continue
        scored += 1
        assert (s.ap, s.ap50, s.ap75) == pytest.approx((ap, ap50, ap75), abs=1e-12)
    assert 6 <= scored <= len(scores) - 2


def test_a_hand_counted_image() -> None:
    """Two dogs: a perfect box (0.9), a box on nothing (0.8), the second dog's perfect box
    (0.7): precision 1 up to recall 0.5, 2/3 at recall 1, at every IoU threshold; a cat
    detected where there is no cat does not count (COCOeval scores the categories present)."""
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20], "area": 400,
               "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 5, "bbox": [50, 50, 30, 30], "area": 900,
               "iscrowd": 0}],
          "categories": CATEGORIES}
    results = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20], "score": 0.9},
               {"image_id": 1, "category_id": 5, "bbox": [70, 0, 10, 10], "score": 0.8},
               {"image_id": 1, "category_id": 5, "bbox": [50, 50, 30, 30], "score": 0.7},
               {"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.95}]
    [score] = per_image_ap(gt, results)
    expected = (51 * 1 + 50 * 2 / 3) / 101  # COCO's 101 recall points: 0..0.5 and 0.51..1
    assert (score.ap, score.ap50, score.ap75) == pytest.approx((expected,) * 3, abs=1e-12)
    assert score.objects == 2 and score.detections == 4


def test_the_memory_of_many_images_is_not_a_curve_per_image_and_category() -> None:
    """Each (image, category)'s 10 x 101 precision curve was held to the end: on COCO train's
    120k images the tool peaked at 18 GB, above pycocotools' whole evaluation."""
    images, anns, results = [], [], []
    for i in range(1, 251):
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 200, "width": 200})
        for k, category in enumerate(CATEGORIES):
            box = [10 + 40 * k, 10 + i % 50, 30, 30]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": category["id"],
                         "bbox": box, "area": 900, "iscrowd": 0})
            results.append({"image_id": i, "category_id": category["id"], "score": 0.9,
                            "bbox": [box[0] + i % 7, *box[1:]]})
    gt = {"images": images, "annotations": anns, "categories": CATEGORIES}
    curves = len(anns) * 10 * 101 * 8  # bytes of every image and category's curve
    tracing = tracemalloc.is_tracing()  # (PYTHONTRACEMALLOC=1: from the session's start)
    if not tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        scores = per_image_ap(gt, results)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    assert peak < curves / 2, (peak, curves)  # (with the curves: 1.4 x their size)
    shifted = {s.image_id: s.ap for s in scores}
    assert shifted[7] == pytest.approx(1.0, abs=1e-12)  # (shifted by 0 pixels, and by 6)
    assert shifted[6] == pytest.approx(0.4, abs=1e-12)  # (IoU 0.67: matched at 4 of the 10)


def test_ranking_and_csv(tmp_path) -> None:
    scores = [ImageScore(1, "a.jpg", 2, 3, 0.5, 0.9, 0.4),
              ImageScore(2, "b.jpg", 0, 4, None, None, None),
              ImageScore(3, "c.jpg", 1, 1, 0.5, 1.0, 0.0),
              ImageScore(4, "d.jpg", 5, 2, 0.1, 0.2, 0.0),
              ImageScore(5, "e.jpg", 3, 3, 1.0, 1.0, 1.0)]
    assert [s.image_id for s in ranked(scores, best=True)] == [5, 1, 3, 4]
    assert [s.image_id for s in ranked(scores, best=False)] == [4, 1, 3, 5]  # ties: more objects
    write_csv(scores, tmp_path / "x.csv")
    rows = list(csv.reader((tmp_path / "x.csv").open()))
    assert rows[0] == ["image_id", "file_name", "objects", "detections", "ap", "ap50", "ap75"]
    assert rows[1] == ["4", "d.jpg", "5", "2", "10.00", "20.00", "0.00"]
    assert [r[0] for r in rows[1:]] == ["4", "1", "3", "5", "2"]
    assert rows[-1] == ["2", "b.jpg", "0", "4", "", "", ""]


def test_the_picture_holds_truth_left_and_detections_over_the_threshold_right() -> None:
    image = np.full((60, 80, 3), 40, dtype=np.uint8)
    anns = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20], "iscrowd": 0,
             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}]
    dets = [{"image_id": 1, "category_id": 2, "bbox": [40, 30, 20, 20], "score": 0.9},
            {"image_id": 1, "category_id": 9, "bbox": [5, 40, 10, 10], "score": 0.1}]
    colours = palette(3)
    picture = draw_side_by_side(image, anns, dets, ImageScore(1, "a.jpg", 1, 2, 0.0, 0.0, 0.0),
                                CATEGORIES, colours, score_thr=0.3, masks=True)
    assert picture.shape == (60 + 24, 2 * 80 + 6, 3)
    left, right = picture[24:, :80], picture[24:, 86:]
    cat, dog, bird = (tuple(int(v) for v in c) for c in colours)  # in the order of their ids
    assert tuple(left[20, 20]) != (40, 40, 40)  # the dog's mask filled in
    assert tuple(left[30, 10]) == dog  # its box's bottom-left corner (the tag sits on top)
    assert tuple(right[50, 60]) == cat  # the cat's box at 0.9, bottom-right corner
    assert (right[40:50, 5:15] == 40).all()  # the bird at 0.1 is not drawn
    assert (right[5:35, 5:35] == 40).all()  # nor the ground truth
    assert bird != cat


def test_an_image_too_wide_for_a_jpeg_side_by_side_is_drawn_above_its_detections() -> None:
    image = np.zeros((20, 33000, 3), dtype=np.uint8)
    picture = draw_side_by_side(image, [], [], ImageScore(1, "w.jpg", 0, 0, None, None, None),
                                CATEGORIES, palette(3), score_thr=0.3, masks=False)
    assert picture.shape == (2 * (20 + 24) + 6, 33000, 3)


def test_masks_reach_the_picture_as_rles_and_unusable_ones_as_empty() -> None:
    from pycocotools import mask as mask_utils

    from resnet_detect.detection.analyze_results import _objects
    from resnet_detect.engine.data.coco import segmentation_to_mask

    polygon = [[10, 10, 30, 10, 30, 30, 10, 30], [40, 5, 50, 5, 45, 20]]
    counts = mask_utils.encode(np.asfortranarray((np.arange(60 * 80).reshape(60, 80) % 7 == 0)
                                                 .astype(np.uint8)))
    good = [polygon, {"size": [60, 80], "counts": counts["counts"].decode("ascii")},
            {"size": [60, 80], "counts": [100, 20, 4680]}]
    bad = [None, [[1, 2, 3]], {"size": [30, 80], "counts": [2400]}, {"counts": "x"},
           {"size": [60, 80], "counts": [4000, 2000]}, {"size": [60, 80], "counts": ""},
           {"size": [60, 80], "counts": [100, 20]}]  # runs past, short of the image
    anns = [{"bbox": [0, 0, 5, 5], "category_id": 5, "segmentation": s} for s in good + bad]
    objects = _objects(anns, {5: "dog"}, {5: 1}, (60, 80), masks=True, scores=False)
    assert all(isinstance(m, dict) for m in objects["masks"])
    for rle, segmentation in zip(objects["masks"], good):
        expected = segmentation_to_mask(segmentation, 60, 80)
        assert expected.any()
        np.testing.assert_array_equal(mask_utils.decode(rle), expected)
    for rle in objects["masks"][len(good):]:
        assert not mask_utils.decode(rle).any() and list(rle["size"]) == [60, 80]
