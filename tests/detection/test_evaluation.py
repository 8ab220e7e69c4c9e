"""detection.evaluation: results format, parity with pycocotools run directly, backends."""
from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnet_detect.detection.evaluation import (RESULTS_FILE, COCOEvaluator, evaluate_coco,
                                                ground_truth, instances_to_coco_results,
                                                mask_to_rle)
from resnet_detect.detection.voc_eval import evaluate_voc
from resnet_detect.engine.data import DatasetError

CATEGORY_IDS = (1, 3, 5)  # contiguous label i <-> CATEGORY_IDS[i]
NAMES = ("ring", "box", "blob")


def _square(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


@pytest.fixture(scope="module")
def gt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six images with small, medium and large objects of three classes, plus a crowd region."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, 7):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 200,
                       "width": 300})
        for _ in range(4):
            w, h = (float(v) for v in rng.choice([12, 40, 120], size=2))
            x, y = float(rng.integers(0, 300 - w)), float(rng.integers(0, 200 - h))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice(CATEGORY_IDS)),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                                "segmentation": _square(x, y, w, h)})
    annotations.append({"id": len(annotations) + 1, "image_id": 1, "category_id": 3,
                        "bbox": [0.0, 0.0, 50.0, 50.0], "area": 2500.0, "iscrowd": 1,
                        "segmentation": _square(0, 0, 50, 50)})
    path = tmp_path_factory.mktemp("gt") / "gt.json"
    path.write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, NAMES)]}))
    return path


def _gt(gt_file: Path) -> dict[str, Any]:
    return json.loads(gt_file.read_bytes())


def _perfect(gt_file: Path, with_masks: bool = False) -> tuple[list[dict], list[dict]]:
    """Ground truth as model outputs (xyxy, contiguous labels, torch tensors)."""
    gt = _gt(gt_file)
    inputs, outputs = [], []
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"] and not a["iscrowd"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns])
        out = {"boxes": boxes, "scores": torch.ones(len(anns)),
               "labels": torch.tensor([CATEGORY_IDS.index(a["category_id"]) for a in anns])}
        if with_masks:
            out["masks"] = torch.from_numpy(np.stack([
                mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
                    a["segmentation"], img["height"], img["width"]))) for a in anns]).astype(bool))
        inputs.append({"image_id": img["id"]})
        outputs.append(out)
    return inputs, outputs


def _noisy(gt_file: Path) -> tuple[list[dict], list[dict]]:
    """Jittered, partly mislabelled detections plus false positives, as numpy arrays."""
    rng = np.random.default_rng(1)
    inputs, outputs = _perfect(gt_file)
    for out in outputs:
        boxes = out["boxes"].numpy() + rng.normal(0, 3, size=out["boxes"].shape)
        labels = out["labels"].numpy().copy()
        labels[rng.random(len(labels)) < 0.25] = rng.integers(0, 3)
        extra = rng.uniform(0, 150, size=(3, 2))
        boxes = np.concatenate([boxes, np.concatenate([extra, extra + 40], axis=1)])
        out["boxes"] = boxes
        out["labels"] = np.concatenate([labels, rng.integers(0, 3, size=3)])
        out["scores"] = rng.random(len(boxes))
    return inputs, outputs


def _direct_stats(gt_file: Path, results_file: Path, iou_type: str = "bbox",
                  cat_ids: list[int] | None = None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(str(results_file))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _run(gt_file: Path, out_dir: Path, data: tuple[list[dict], list[dict]], **kwargs: Any,
         ) -> dict[str, dict[str, Any]]:
    evaluator = COCOEvaluator(gt_file, category_ids=CATEGORY_IDS, output_dir=out_dir, **kwargs)
    inputs, outputs = data
    evaluator.process(inputs[:3], outputs[:3])
    evaluator.process(inputs[3:], outputs[3:])
    return evaluator.evaluate()


def test_numbers_equal_pycocotools_on_the_written_file(gt_file: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    metrics = _run(gt_file, tmp_path, _noisy(gt_file))["bbox"]
    results_file = tmp_path / RESULTS_FILE
    written = json.loads(results_file.read_text())
    assert len(written) == sum(len(o["boxes"]) for o in _noisy(gt_file)[1])
    assert {r["category_id"] for r in written} == set(CATEGORY_IDS)
    first_box = _noisy(gt_file)[1][0]["boxes"][0]
    np.testing.assert_allclose(written[0]["bbox"], [first_box[0], first_box[1],
                                                    first_box[2] - first_box[0],
                                                    first_box[3] - first_box[1]], atol=1e-3)
    stats = _direct_stats(gt_file, results_file)
    assert metrics["stats"] == [float(v) for v in stats]
    for i, name in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        assert metrics[name] == stats[i] * 100
    assert 10 < metrics["AP"] < 90  # a meaningful, non-trivial case
    sizes_seen = set()
    for cat_id, name in zip(CATEGORY_IDS, NAMES):
        alone = _direct_stats(gt_file, results_file, cat_ids=[cat_id])
        for i, key in enumerate(("per_category", "per_category_AP50", "per_category_AP75",
                                 "per_category_APs", "per_category_APm", "per_category_APl")):
            if alone[i] < 0:  # COCOeval's -1: no object of that size
                assert math.isnan(metrics[key][name])
            else:
                sizes_seen.add(key)
                assert metrics[key][name] == pytest.approx(alone[i] * 100, abs=1e-9)
    assert {"per_category_APs", "per_category_APm", "per_category_APl"} <= sizes_seen
    assert metrics["per_category_AP50"] != metrics["per_category_AP75"]
    assert metrics["per_category_APs"] != metrics["per_category_APl"]
    printed = capsys.readouterr().out
    assert "category | AP     | AP50   | AP75   | APs    | APm    | APl" in printed
    first = [metrics[key][NAMES[0]] for key in (
        "per_category", "per_category_AP50", "per_category_AP75", "per_category_APs",
        "per_category_APm", "per_category_APl")]
    assert f"{NAMES[0]:<8} | " + " | ".join(
        "   n/a" if math.isnan(v) else f"{v:6.2f}" for v in first) in printed
    assert printed.count("Average Precision") == 6 and printed.count("Average Recall") == 6
    assert f"= {stats[0]:0.3f}" in printed
    assert all(name in printed for name in NAMES)


def test_faster_coco_eval_gives_the_same_numbers(gt_file: Path, tmp_path: Path) -> None:
    data = _noisy(gt_file)
    reference = _run(gt_file, tmp_path / "a", data)["bbox"]
    fast = _run(gt_file, tmp_path / "b", data, backend="faster_coco_eval")["bbox"]
    # identical up to floating-point summation order
    np.testing.assert_allclose(fast["stats"], reference["stats"], rtol=0, atol=1e-12)
    for name in NAMES:
        for key in ("per_category", "per_category_AP50", "per_category_AP75",
                    "per_category_APs", "per_category_APm", "per_category_APl"):
            assert fast[key][name] == pytest.approx(reference[key][name], abs=1e-10,
                                                    nan_ok=True)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_perfect_predictions_give_ap_100(gt_file: Path, tmp_path: Path, backend: str) -> None:
    metrics = _run(gt_file, tmp_path, _perfect(gt_file), backend=backend)["bbox"]
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert metrics[name] == pytest.approx(100.0, abs=1e-9)
    assert all(v == pytest.approx(100.0, abs=1e-9) for v in metrics["per_category"].values())


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_zero_detections_give_zero_and_a_warning(gt_file: Path, tmp_path: Path,
                                                 backend: str) -> None:
    empty = ([{"image_id": 1}], [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                  "labels": torch.zeros(0, dtype=torch.int64)}])
    with pytest.warns(RuntimeWarning, match="no detections"):
        metrics = _run(gt_file, tmp_path, empty, backend=backend)["bbox"]
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == []
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert metrics[name] == 0.0
    assert metrics["per_category"] == {name: 0.0 for name in NAMES}


def test_missing_size_range_is_nan_not_zero(tmp_path: Path) -> None:
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 50],
                           "area": 2500.0, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "ring"}, {"id": 3, "name": "box"}]}
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(gt))
    metrics = evaluate_coco(gt_file, [{"image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 50],
                                       "score": 0.9}], verbose=False)
    assert metrics["AP"] == pytest.approx(100.0) and metrics["APm"] == pytest.approx(100.0)
    assert math.isnan(metrics["APs"]) and math.isnan(metrics["APl"])
    assert math.isnan(metrics["per_category"]["ring"])


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_dense_scenes_are_scored_at_the_detections_the_model_keeps(
        tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    """150 objects of one class in an image, found exactly: COCO's 100 detections per image
    and category cap the AP (with a warning naming the image); max_dets=200 scores them all
    (detectron2's max_dets_per_image; pycocotools' own summary gives -1 there)."""
    annotations = [{"id": k + 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 100.0,
                    "bbox": [float(20 * (k % 15)), float(20 * (k // 15)), 10.0, 10.0]}
                   for k in range(150)]
    gt_file = tmp_path / "dense.json"
    gt_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "height": 200, "width": 300}],
        "annotations": annotations, "categories": [{"id": 3, "name": "box"}]}))
    results = [{"image_id": 1, "category_id": 3, "bbox": a["bbox"], "score": 1.0 - k / 1000}
               for k, a in enumerate(annotations)]
    with pytest.warns(RuntimeWarning, match=r"1 images hold more objects of a category than the "
                                            r"100 detections .*image id 1: 150 'box'"):
        capped = evaluate_coco(gt_file, results, backend=backend, verbose=False)
    # 2/3 found: precision 1 at the 67 recall points 0, 0.01, ..., 0.66 of COCO's 101
    assert capped["AP"] == capped["AP50"] == pytest.approx(100 * 67 / 101)
    assert capped["stats"][8] == pytest.approx(100 / 150)  # AR@100
    full = evaluate_coco(gt_file, results, backend=backend, max_dets=200)
    assert full["AP"] == full["AP50"] == full["APs"] == pytest.approx(100.0)
    assert full["stats"][6:9] == pytest.approx([1 / 150, 10 / 150, 1.0])  # AR@1, @10, @200
    assert "maxDets=200 ] = 1.000" in capsys.readouterr().out


def test_images_of_more_objects_than_the_model_keeps_are_warned_of(tmp_path: Path) -> None:
    """60 objects of 3 classes in an image (20 of each, under COCO's 100 per class), a model
    keeping 50 detections of an image: its best 50, all right, find 50 of 60, and nothing
    said so (a crowd scene of many classes lost half its recall without a word)."""
    annotations = [{"id": k + 1, "image_id": 7, "category_id": 1 + k % 3, "iscrowd": 0,
                    "area": 100.0, "bbox": [float(20 * (k % 12)), float(20 * (k // 12)),
                                            10.0, 10.0]} for k in range(60)]
    annotations.append({"id": 61, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 1.0,
                        "bbox": [290.0, 190.0, 5.0, 5.0]})  # a crowd region is no object
    gt_file = tmp_path / "crowd.json"
    gt_file.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "7.jpg", "height": 200, "width": 300}],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}))
    results = [{"image_id": 7, "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0 - k / 1000} for k, a in enumerate(annotations[:50])]
    with pytest.warns(RuntimeWarning, match=r"crowd.json: 1 images hold more objects than the "
                                            r"50 detections the model keeps of an image \(image "
                                            r"id 7: 60 objects\).*raise "
                                            r"model.roi_heads.detections_per_image"):
        metrics = evaluate_coco(gt_file, results, verbose=False, kept_per_image=50)
    assert metrics["stats"][8] == pytest.approx(50 / 60)  # AR@100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_coco(gt_file, results, verbose=False, kept_per_image=60)
        evaluate_coco(gt_file, results, verbose=False)  # the model's count not known
    evaluator = COCOEvaluator(gt_file, category_ids=[1, 2, 3], kept_per_image=59)
    detections = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
                   "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    with pytest.warns(RuntimeWarning, match=r"than the 59 detections the model keeps"):
        evaluator.process([{"image_id": 7}], detections)
        evaluator.evaluate()
    # a training's later evaluations: what it says of the file is not said again (it was,
    # at each); what it says of the detections is
    evaluator.reset()
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        evaluator.evaluate()
    assert [str(w.message).split(": ", 1)[0] for w in again] == [
        f"no detections to evaluate against {gt_file}"]
    evaluator.process([{"image_id": 7}], detections)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluator.evaluate()


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_segm_perfect_masks_and_parity(gt_file: Path, tmp_path: Path, backend: str) -> None:
    metrics = _run(gt_file, tmp_path, _perfect(gt_file, with_masks=True), backend=backend,
                   iou_types=("bbox", "segm"))
    assert metrics["segm"]["AP"] == pytest.approx(100.0, abs=1e-9)
    written = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert all("segmentation" in r and "bbox" in r for r in written)
    stats = _direct_stats(gt_file, tmp_path / RESULTS_FILE, iou_type="segm")
    np.testing.assert_allclose(metrics["segm"]["stats"], stats, rtol=0, atol=1e-12)


def test_invalid_arguments_are_rejected(gt_file: Path) -> None:
    with pytest.raises(ValueError, match="backend"):
        COCOEvaluator(gt_file, category_ids=CATEGORY_IDS, backend="detectron2")
    with pytest.raises(ValueError, match="iou_types"):
        COCOEvaluator(gt_file, category_ids=CATEGORY_IDS, iou_types=("keypoints",))


def _pycocotools_rle(mask: np.ndarray) -> dict[str, Any]:
    """The straightforward encoding: the whole mask as a Fortran-ordered uint8 array."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def test_rle_is_pycocotools_encoding_of_the_whole_mask() -> None:
    """mask_to_rle reads the runs from the box around the mask's pixels: the same string as
    pycocotools' encoding of the whole mask, bit for bit, whatever the mask touches (runs
    going on from the last row of a column to the first of the next, the first and last
    pixels), and for 0/1 integers, values above 1 and masks of no pixels."""
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(0, 9, size=2))
        masks.append(rng.random((h, w)) < rng.random())
        box = np.zeros((h, w), bool)
        if h and w:
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            box[y0:int(rng.integers(y0, h + 1)), x0:int(rng.integers(x0, w + 1))] = True
        masks.append(box)
    full_height = np.zeros((6, 9), bool)
    full_height[:, 2:5] = True
    full_height[5, 8] = True
    masks += [full_height, np.ones((6, 9), bool), np.asfortranarray(full_height),
              full_height[::2, 1:], rng.integers(0, 2, (7, 5)).astype(np.int64),
              np.array([[0, 2, 2], [1, 1, 0]], np.uint8), np.zeros((0, 4), bool)]
    for mask in masks:
        assert mask_to_rle(mask) == _pycocotools_rle(mask), mask


def test_rle_of_a_large_mask_copies_none_of_it() -> None:
    """Encoding a photo-sized mask makes no full-size copy of it (a C-ordered mask copied into
    column order for pycocotools, for each detection, was most of a large photo's evaluation
    time)."""
    import tracemalloc

    mask = np.zeros((2000, 3000), bool)
    yy, xx = np.mgrid[:300, :200]
    mask[1000:1300, 400:600] = ((xx - 100) / 90.0) ** 2 + ((yy - 150) / 140.0) ** 2 <= 1
    tracemalloc.start()
    try:
        rle = mask_to_rle(mask)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rle == _pycocotools_rle(mask)
    assert peak < mask.nbytes // 10, peak


def test_pasted_mask_rles_are_the_pasted_masks_encoded() -> None:
    """pasted_mask_rles encodes each mask from its box region: the strings of the masks
    paste_masks gives, encoded whole, for boxes inside the image, across its edges, over all
    of it (runs going on from a column's last row to the next's first) and outside it."""
    from resnet_detect.detection.evaluation import pasted_mask_rles
    from resnet_detect.detection.roi_heads import paste_masks

    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(7, 28, 28, generator=generator)
    probs[3] = 1.0
    boxes = torch.tensor([[5.0, 4.0, 30.0, 20.0], [-6.0, 10.0, 12.5, 45.0],
                          [40.0, -3.0, 70.0, 8.0], [-4.0, -4.0, 64.0, 44.0],
                          [-3.0, -5.0, 64.5, 41.0], [70.0, 50.0, 90.0, 60.0],
                          [10.0, 10.0, 10.2, 10.3]])
    for threshold in (0.5, 0.2):
        pasted = paste_masks(probs, boxes, (40, 60), threshold=threshold).numpy()
        assert pasted[3].all() and not pasted[5].any()
        rles = list(pasted_mask_rles(probs, boxes, (40, 60), threshold=threshold))
        assert rles == [_pycocotools_rle(mask) for mask in pasted]
    assert list(pasted_mask_rles(probs[:0], boxes[:0], (40, 60))) == []


def test_rle_round_trip() -> None:
    """Our RLE of a predicted mask, through JSON, decodes back identically with pycocotools."""
    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) > 0.5, np.zeros((37, 53), bool), np.ones((37, 53), bool)]
    ellipse = np.zeros((37, 53), bool)
    yy, xx = np.mgrid[:37, :53]
    ellipse[((xx - 20) / 15.0) ** 2 + ((yy - 18) / 9.0) ** 2 <= 1] = True
    masks.append(ellipse)
    for mask in masks:
        rle = json.loads(json.dumps(mask_to_rle(mask)))
        assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
        decoded = mask_utils.decode(rle)
        assert decoded.dtype == np.uint8 and np.array_equal(decoded.astype(bool), mask)
        assert mask_utils.area(rle) == mask.sum()
    stacked = torch.from_numpy(np.stack(masks))
    results = instances_to_coco_results(
        7, torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4), torch.ones(4), torch.tensor([0, 1, 2, 0]),
        category_ids=CATEGORY_IDS, masks=stacked)
    for result, mask in zip(results, masks):
        assert np.array_equal(mask_utils.decode(result["segmentation"]).astype(bool), mask)
    # a Predictor's labels (category ids) were looked up again: an IndexError, or, below K,
    # silently the next category's id
    with pytest.raises(ValueError, match=rf"labels are the model's 0..{len(CATEGORY_IDS) - 1} "
                                         rf"\(one per category id\), got 0..{len(CATEGORY_IDS)}: "
                                         r"a Predictor's labels are category ids already"):
        instances_to_coco_results(7, torch.zeros(2, 4), torch.ones(2),
                                  torch.tensor([0, len(CATEGORY_IDS)]), category_ids=CATEGORY_IDS)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_area_and_iscrowd_left_out_take_cocos_meaning(gt_file: Path, tmp_path: Path,
                                                      backend: str) -> None:
    """Many converters write neither `area` nor `iscrowd`, or a null area (pycocotools' own
    evaluation then fails with a KeyError or a TypeError, after a whole training run): scored
    as if they held the mask's area and 0, the numbers of the complete file."""
    bare = _gt(gt_file)
    for i, ann in enumerate(bare["annotations"]):
        if i % 2:
            del ann["area"]
        else:
            ann["area"] = None
        if not ann["iscrowd"]:
            del ann["iscrowd"]
    bare_file = tmp_path / "bare.json"
    bare_file.write_text(json.dumps(bare))
    data = _noisy(gt_file)
    _run(gt_file, tmp_path / "ref", data)
    metrics = _run(bare_file, tmp_path / "bare", data, backend=backend)["bbox"]
    stats = _direct_stats(gt_file, tmp_path / "ref" / RESULTS_FILE)
    np.testing.assert_allclose(metrics["stats"], stats, rtol=0, atol=1e-12)
    assert 10 < metrics["AP"] < 90
    masks = _run(bare_file, tmp_path / "segm", _perfect(gt_file, with_masks=True),
                 backend=backend, iou_types=("segm",))["segm"]
    np.testing.assert_allclose(
        masks["stats"], _direct_stats(gt_file, tmp_path / "segm" / RESULTS_FILE, "segm"),
        rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_files_numbered_otherwise_score_as_the_plain_file(gt_file: Path, tmp_path: Path,
                                                          backend: str) -> None:
    """Annotation ids from 0 (Label Studio's, CVAT's exports): COCOeval took object 0's
    match for none, a false positive. Image ids below 0, and RLE sizes written as floats:
    faster-coco-eval's segm scoring failed (pycocotools takes both)."""
    odd = _gt(gt_file)
    for img in odd["images"]:
        img["id"] -= 10  # -9..-4, in the same order
    for ann in odd["annotations"]:
        ann["id"] -= 1
        ann["image_id"] -= 10
        if not ann["iscrowd"]:
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 200, 300))
            ann["segmentation"] = {"size": [200.0, 300.0], "counts": rle["counts"].decode()}
    assert min(ann["id"] for ann in odd["annotations"]) == 0
    odd_file = tmp_path / "odd.json"
    odd_file.write_text(json.dumps(odd))
    for iou_type, data in (("bbox", _noisy(gt_file)), ("segm", _noisy_masks(gt_file))):
        _run(gt_file, tmp_path / iou_type, data, iou_types=(iou_type,))
        results = json.loads((tmp_path / iou_type / RESULTS_FILE).read_text())
        expected = _direct_stats(gt_file, tmp_path / iou_type / RESULTS_FILE, iou_type)
        assert 10 < expected[0] * 100 < 95
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = evaluate_coco(odd_file, [{**r, "image_id": r["image_id"] - 10}
                                           for r in results],
                                iou_type=iou_type, backend=backend, verbose=False)
        np.testing.assert_allclose(got["stats"], expected, rtol=0, atol=1e-12)
        # (said once an evaluation: at its bbox scoring)
        said = [str(w.message) for w in caught if "annotation id 0" in str(w.message)]
        assert said == ([f"{odd_file}: an object has annotation id 0, which pycocotools takes "
                         f"for no match: detectron2 and mmdetection (through pycocotools) count "
                         f"its detection as a false one, here it is scored as any other (their "
                         f"AP on this file is lower; number the ids from 1 to compare)"]
                        if iou_type == "bbox" else [])
    # an LVIS file's: lvis-api has pycocotools' rule
    lvis = {**odd, "images": [{**img, "neg_category_ids": [], "not_exhaustive_category_ids": []}
                              for img in odd["images"]],
            "categories": [{**c, "frequency": "f"} for c in odd["categories"]]}
    odd_file.write_text(json.dumps(lvis))
    with pytest.warns(RuntimeWarning, match="annotation id 0, which pycocotools takes for no "
                                            "match: lvis-api, detectron2 and mmdetection count"):
        evaluate_coco(odd_file, [], backend=backend, verbose=False)


def _noisy_masks(gt_file: Path) -> tuple[list[dict], list[dict]]:
    """The perfect masks with every third one dropped and a score each."""
    inputs, outputs = _perfect(gt_file, with_masks=True)
    rng = np.random.default_rng(2)
    for out in outputs:
        keep = torch.arange(len(out["boxes"])) % 3 != 1
        out.update({k: v[keep] for k, v in out.items()})
        out["scores"] = torch.from_numpy(rng.uniform(0.1, 1.0, int(keep.sum())).astype(np.float32))
    return inputs, outputs


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_objects_without_a_usable_mask_are_ignored_in_segm(tmp_path: Path,
                                                           backend: str) -> None:
    """An empty segmentation and a 2-point polygon (pycocotools fails on both) leave the
    object out of the segm ground truth as training does: a crowd region over its box, so a
    mask found there is neither a hit nor a false positive. Its box still counts in bbox."""
    square = _square(20, 20, 40, 40)
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 120}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 40, 40],
               "segmentation": square},
              {"id": 2, "image_id": 1, "category_id": 1, "bbox": [70, 10, 30, 30],
               "segmentation": []},
              {"id": 3, "image_id": 1, "category_id": 1, "bbox": [70, 50, 40, 40],
               "segmentation": [[1, 1, 5, 5], *_square(70, 50, 40, 40)]}],
          "categories": [{"id": 1, "name": "ring"}]}
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(gt))
    masks = np.zeros((3, 100, 120), bool)
    masks[0, 20:60, 20:60] = masks[1, 10:40, 70:100] = masks[2, 50:90, 70:110] = True
    rles = [mask_to_rle(m) for m in masks]
    boxes = [[20, 20, 40, 40], [70, 10, 30, 30], [70, 50, 40, 40]]
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": s, "segmentation": r}
               for b, r, s in zip(boxes, rles, (0.9, 0.95, 0.8))]
    with pytest.warns(RuntimeWarning, match=r"1 objects without a usable mask are ignored .*; "
                                            r"annotation ids \[2\]\)"):
        segm = evaluate_coco(gt_file, results, iou_type="segm", backend=backend, verbose=False)
    reference = dict(gt, annotations=[
        {**gt["annotations"][0], "area": 1600.0, "iscrowd": 0},
        {**gt["annotations"][1], "area": 900.0, "iscrowd": 1,
         "segmentation": _square(70, 10, 30, 30)},
        {**gt["annotations"][2], "area": 1600.0, "iscrowd": 0,
         "segmentation": _square(70, 50, 40, 40)}])
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    (tmp_path / "results.json").write_text(json.dumps(results))
    stats = _direct_stats(tmp_path / "reference.json", tmp_path / "results.json", "segm")
    np.testing.assert_allclose(segm["stats"], stats, rtol=0, atol=1e-12)
    assert segm["AP"] == pytest.approx(100.0)  # the mask on object 2 is not a false positive
    with_fp = [r for r in results if r["score"] != 0.95]
    with_fp.append({**results[1], "segmentation": mask_to_rle(np.roll(masks[1], 50, axis=1))})
    assert evaluate_coco(gt_file, with_fp, iou_type="segm", backend=backend,
                         verbose=False)["AP"] < 100  # elsewhere it is one
    box = evaluate_coco(gt_file, results[:1] + results[2:], backend=backend, verbose=False)
    assert box["AP"] < 100  # in bbox, object 2 is a real object that was missed


def test_a_malformed_mask_is_refused_in_segm_and_scored_in_bbox(tmp_path: Path) -> None:
    """A polygon of an odd count of numbers or an RLE of another size than its image, on a
    crowd region as on an object, became a crowd region over its box without a word (a crowd
    polygon's: no warning at all): a mask AP of 36.4 where pycocotools, which reads such a
    polygon without its last number, gives 31.7; training and the evaluation of weights
    refuse the same file. The segm evaluation refuses it too, naming each; bbox scores it."""
    square = _square(20, 20, 40, 40)
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 120}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 40, 40],
               "segmentation": square},
              {"id": 7, "image_id": 1, "category_id": 1, "bbox": [70, 10, 30, 30],
               "iscrowd": 1, "segmentation": [[70, 10, 100, 10, 100, 40, 70]]},
              {"id": 8, "image_id": 1, "category_id": 1, "bbox": [70, 50, 40, 40],
               "segmentation": mask_to_rle(np.ones((50, 60), bool))}],
          "categories": [{"id": 1, "name": "ring"}]}
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(gt))
    mask = np.zeros((100, 120), bool)
    mask[20:60, 20:60] = True
    results = [{"image_id": 1, "category_id": 1, "bbox": [20, 20, 40, 40], "score": 0.9,
                "segmentation": mask_to_rle(mask)}]
    with pytest.raises(DatasetError) as refused:
        evaluate_coco(gt_file, results, iou_type="segm", verbose=False)
    assert str(refused.value) == (
        f"{gt_file}: 2 problem(s):\n"
        f"  annotation id=7 (image id=1), a crowd region: a polygon holds an odd count of "
        f"numbers (7), not x, y pairs: [70, 10, 100, 10, 100, 40, 70]\n"
        f"  annotation id=8 (image id=1): RLE segmentation size [50, 60] is not the image's "
        f"[height, width] = [100, 120]")
    box = evaluate_coco(gt_file, results, verbose=False)
    assert box["stats"][8] == pytest.approx(0.5)  # AR@100: one of the two objects found


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_an_ignored_objects_box_is_clipped_to_its_image(tmp_path: Path, backend: str) -> None:
    """The box of an object without a usable mask was rasterised as written: an infinite
    side crashed pycocotools (segfault), a side of 2e7 px took 2 GB. Clipped to the image, or
    left out where no box remains."""
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 120}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 40, 40],
               "segmentation": _square(20, 20, 40, 40)},
              {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, float("inf"), 20],
               "segmentation": [[1, 1, 5, 5]]},
              {"id": 3, "image_id": 1, "category_id": 1, "bbox": [70, 0, 2e7, 30]}],
          "categories": [{"id": 1, "name": "ring"}]}
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(gt))
    masks = np.zeros((2, 100, 120), bool)
    masks[0, 20:60, 20:60] = masks[1, 0:30, 70:120] = True
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": s,
                "segmentation": mask_to_rle(m)}
               for b, m, s in zip([[20, 20, 40, 40], [70, 0, 50, 30]], masks, (0.9, 0.95))]
    with pytest.warns(RuntimeWarning, match="2 objects without a usable mask are ignored"):
        segm = evaluate_coco(gt_file, results, iou_type="segm", backend=backend, verbose=False)
    assert segm["AP"] == pytest.approx(100.0)  # the mask in object 3's box: no false positive
    assert ground_truth(gt_file, "segm")[0]["annotations"][1]["segmentation"] == [
        [70.0, 0.0, 120.0, 0.0, 120.0, 30.0, 70.0, 30.0]]


def test_categories_sharing_a_name_each_keep_their_ap(gt_file: Path, tmp_path: Path) -> None:
    merged = _gt(gt_file)
    merged["categories"][1]["name"] = merged["categories"][0]["name"]  # "ring" twice
    merged_file = tmp_path / "merged.json"
    merged_file.write_text(json.dumps(merged))
    data = _noisy(gt_file)
    reference = _run(gt_file, tmp_path / "ref", data)["bbox"]["per_category"]
    per_category = _run(merged_file, tmp_path / "merged", data)["bbox"]["per_category"]
    assert per_category == {"ring (id 1)": reference["ring"], "ring (id 3)": reference["box"],
                            "blob": reference["blob"]}


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_evaluation_leaves_the_callers_results_as_they_were(gt_file: Path, backend: str) -> None:
    """The results are copied entry by entry, not deeply (the deep copy was most of a COCO-scale
    evaluation's setup): neither backend may change what the caller holds, at any depth."""
    inputs, outputs = _perfect(gt_file, with_masks=True)
    results = [r for i, o in zip(inputs, outputs) for r in instances_to_coco_results(
        i["image_id"], o["boxes"], o["scores"], o["labels"], category_ids=CATEGORY_IDS,
        masks=o["masks"])]
    before = json.dumps(results, sort_keys=True)
    for iou_type in ("bbox", "segm"):
        assert evaluate_coco(gt_file, results, iou_type=iou_type, backend=backend,
                             verbose=False)["AP"] == pytest.approx(100.0, abs=1e-9)
    assert json.dumps(results, sort_keys=True) == before


def test_an_lvis_v1_file_is_scored_with_lvis_federated_ap(gt_file: Path, tmp_path: Path) -> None:
    """LVIS v1: images named by coco_url alone, categories with a frequency, no iscrowd
    (the federated rules themselves: test_federated.py)."""
    lvis = _gt(gt_file)
    for img in lvis["images"]:
        img["coco_url"] = f"http://images.cocodataset.org/val2017/{img.pop('file_name')}"
        img["neg_category_ids"], img["not_exhaustive_category_ids"] = [], []
    for category in lvis["categories"]:
        category.update(frequency="r", synonyms=[category["name"]])
    lvis["annotations"] = [{k: v for k, v in ann.items() if k != "iscrowd"}
                           for ann in lvis["annotations"] if not ann["iscrowd"]]
    lvis_file = tmp_path / "lvis_v1_val.json"
    lvis_file.write_text(json.dumps(lvis))
    metrics = _run(lvis_file, tmp_path, _perfect(gt_file))["bbox"]
    assert metrics["AP"] == pytest.approx(100.0, abs=1e-9)
    assert metrics["APr"] == pytest.approx(100.0, abs=1e-9)
    assert math.isnan(metrics["APc"]) and math.isnan(metrics["APf"])


def test_a_summary_of_many_categories_logs_the_lowest_and_highest_aps() -> None:
    """LVIS's 1203 categories made 1203 log lines at every evaluation."""
    from resnet_detect.detection.evaluation import format_summary
    per_category = {f"c{i}": float(i % 997) / 10 for i in range(1203)}
    per_category["c5"] = math.nan
    text = format_summary([0.1] * 12, per_category, "bbox")
    assert ("per-category AP of 1203 categories (1 without ground truth): all in metrics.json; "
            "the lowest and highest 10:") in text
    rows = [line for line in text.splitlines()
            if " | " in line and "category" not in line and "Average" not in line]
    assert len(rows) == 20
    assert rows[0].split()[-1] == "0.00" and rows[-1].split()[-1] == "99.60"
    sparse = {f"c{i}": math.nan if i > 2 else 50.0 for i in range(150)}
    assert ("(147 without ground truth): all in metrics.json; those scored:"
            in format_summary([0.1] * 12, sparse, "bbox"))
    few = format_summary([0.1] * 12, {"a": 1.0, "b": math.nan}, "bbox")
    assert "a        |   1.00" in few and "b        |    n/a" in few


def test_an_area_left_out_is_the_masks_not_the_boxs(tmp_path: Path) -> None:
    """Triangles in 40 x 40 boxes: medium by their box (1600 px), small by their mask (~800):
    a file without `area` scores as the file whose areas pycocotools computes from the
    masks."""
    images, annotations = [], []
    for image_id, (x, y) in enumerate([(10, 10), (100, 60), (200, 20)], start=1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 200,
                       "width": 300})
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1,
                            "bbox": [float(x), float(y), 40.0, 40.0], "iscrowd": 0,
                            "segmentation": [[x, y, x + 40, y, x, y + 40]]})
    categories = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, NAMES)]
    bare_file = tmp_path / "bare.json"
    bare_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                     "categories": categories}))
    for ann in annotations:
        ann["area"] = float(mask_utils.area(mask_utils.merge(
            mask_utils.frPyObjects(ann["segmentation"], 200, 300))))
        assert ann["area"] < 32 ** 2 < 40 * 40
    full_file = tmp_path / "full.json"
    full_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                     "categories": categories}))
    inputs = [{"image_id": img["id"]} for img in images]
    outputs = [{"boxes": torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + 40,
                                        a["bbox"][1] + 40]]),
                "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
               for a in annotations]
    metrics = _run(bare_file, tmp_path / "bare", (inputs, outputs))["bbox"]
    expected = _direct_stats(full_file, tmp_path / "bare" / RESULTS_FILE)
    np.testing.assert_allclose(metrics["stats"], expected, rtol=0, atol=1e-12)
    assert expected[3] == 1.0 and expected[4] == -1.0  # APs of the small ones; none medium


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_scored_categories_are_cocoevals_cat_ids(gt_file: Path, tmp_path: Path,
                                                backend: str) -> None:
    """data.classes scores its categories alone, as mmdetection's CocoMetric sets
    params.catIds; VOC's AP too."""
    inputs, outputs = _noisy(gt_file)
    for out in outputs:  # a model of the first two classes
        keep = np.asarray(out["labels"]) < 2
        out.update(boxes=np.asarray(out["boxes"])[keep], labels=np.asarray(out["labels"])[keep],
                   scores=np.asarray(out["scores"])[keep])
    evaluator = COCOEvaluator(gt_file, category_ids=CATEGORY_IDS[:2], output_dir=tmp_path,
                              backend=backend, scored_categories=CATEGORY_IDS[:2],
                              voc_metric="area")
    evaluator.process(inputs, outputs)
    metrics = evaluator.evaluate()
    stats = _direct_stats(gt_file, tmp_path / RESULTS_FILE, cat_ids=list(CATEGORY_IDS[:2]))
    assert metrics["bbox"]["stats"] == pytest.approx([float(v) for v in stats], abs=1e-12)
    assert list(metrics["bbox"]["per_category"]) == list(NAMES[:2])
    assert list(metrics["voc"]["per_category"]) == list(NAMES[:2])
    everything = evaluate_voc(gt_file, json.loads((tmp_path / RESULTS_FILE).read_text()),
                              mode="area")
    assert [metrics["voc"]["per_category"][n] for n in NAMES[:2]] == [
        everything["per_category"][n] for n in NAMES[:2]]
    assert 10 < metrics["bbox"]["AP"] < 90


def test_objects_without_masks_of_categories_left_out_are_not_counted(
        gt_file: Path, tmp_path: Path) -> None:
    """data.classes: the segm warning counted the objects without a usable mask of the
    categories left out too (none of the scored objects lacked one)."""
    gt = _gt(gt_file)
    for ann in gt["annotations"]:
        if ann["category_id"] == 5:
            ann["segmentation"] = []
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    lacking = sum(a["category_id"] == 5 for a in gt["annotations"])
    assert lacking > 0 and len(ground_truth(path, "segm")[1]) == lacking
    assert ground_truth(path, "segm", categories=[1, 3])[1] == []
