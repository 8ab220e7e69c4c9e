"""detection.data: COCO loading and validation, decoding, transforms, dataset, samplers."""
from __future__ import annotations

import gc
import itertools
import json
import os
import random
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from resnet_detect.detection.data import DetectionDataset, build_transforms, resized_shape
from resnet_detect.detection.data.dataset import aspect_groups
from resnet_detect.detection.config import load_config
from resnet_detect.detection.evaluation import ground_truth
from resnet_detect.detection.data.splits import build_train_dataset
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import (CategoryMapping, DatasetError, build_train_loader,
                                       check_image_sizes, collate, image_size, load_coco_json,
                                       read_image)
from resnet_detect.engine.data.coco import rle_string_counts

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _pattern(height: int, width: int) -> np.ndarray:
    """An asymmetric RGB picture: any flip or rotation of it is far from it."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    img[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    img[: height // 4, : width // 3, 2] = 255
    return img


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _coco(images: list[dict[str, Any]], annotations: list[dict[str, Any]],
          categories: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if categories is None:
        categories = [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"},
                      {"id": 40, "name": "forty"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def _ann(ann_id: int, image_id: int, bbox: list[float], category_id: int = 7,
         **extra: Any) -> dict[str, Any]:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": 1.0, "iscrowd": 0, **extra}


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Path, Path]:
    """Three PNG images (40x30, 30x40, 40x30) and a JSON with crowd, clipped and bad boxes."""
    img_dir = tmp_path / "images"
    for name, (h, w) in (("a.png", (30, 40)), ("sub/b.png", (40, 30)), ("c.png", (30, 40))):
        _write_png(img_dir / name, _pattern(h, w))
    images = [{"id": 1, "file_name": "a.png", "height": 30, "width": 40},
              {"id": 2, "file_name": "sub/b.png", "height": 40, "width": 30},
              {"id": 3, "file_name": "c.png", "height": 30, "width": 40}]
    annotations = [
        _ann(1, 1, [-5, 10, 20, 10], category_id=40),   # clipped on the left -> [0, 10, 15, 20]
        _ann(2, 1, [35, 0, 10, 5], category_id=2),      # clipped on the right -> [35, 0, 40, 5]
        _ann(3, 1, [39.5, 0, 10, 10]),                  # 0.5 px wide after clipping: dropped
        _ann(4, 1, [50, 50, 5, 5]),                     # outside the image: dropped
        _ann(5, 1, [3, 3, 0, 8]),                       # zero width: dropped
        _ann(6, 1, [1, 2, 10, 10], iscrowd=1),          # crowd: not a training target
        _ann(7, 2, [2, 4, 6, 8]),
        _ann(8, 3, [5, 5, 10, 10], iscrowd=1),          # image 3 has only a crowd region
    ]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(images, annotations)))
    return ann_file, img_dir


# ---- category mapping ----------------------------------------------------------------------

def test_category_mapping_round_trip() -> None:
    mapping = CategoryMapping.from_categories(
        [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}, {"id": 40, "name": "forty"}])
    assert mapping.dataset_ids == (2, 7, 40)
    assert mapping.names == ("two", "seven", "forty")
    assert mapping.num_classes == 3
    assert [mapping.to_contiguous(i) for i in (2, 7, 40)] == [0, 1, 2]
    assert mapping.to_dataset_ids(np.array([2, 0, 1, 1])).tolist() == [40, 2, 7, 7]
    labels = np.array([0, 1, 2])
    back = [mapping.to_contiguous(i) for i in mapping.to_dataset_ids(labels)]
    assert back == labels.tolist()
    with pytest.raises(KeyError, match="unknown category id 3"):
        mapping.to_contiguous(3)
    with pytest.raises(ValueError, match="labels must lie in"):
        mapping.to_dataset_ids(np.array([3]))


# ---- loading --------------------------------------------------------------------------------

def test_crowd_excluded_boxes_clipped_degenerate_counted(small: tuple[Path, Path]) -> None:
    records, mapping, stats = load_coco_json(*small)
    assert [r["image_id"] for r in records] == [1, 2, 3]
    first = records[0]
    np.testing.assert_array_equal(first["boxes"], [[0, 10, 15, 20], [35, 0, 40, 5]])
    assert first["classes"].tolist() == [2, 0]  # ids 40 and 2 -> contiguous 2 and 0
    assert first["boxes"].dtype == np.float32 and first["classes"].dtype == np.int64
    assert (first["height"], first["width"]) == (30, 40)
    assert first["file_name"] == str(small[1] / "a.png")
    np.testing.assert_array_equal(records[1]["boxes"], [[2, 4, 8, 12]])
    assert records[2]["boxes"].shape == (0, 4) and records[2]["classes"].shape == (0,)
    assert (stats.crowd, stats.degenerate, stats.boxes) == (2, 3, 3)
    assert (stats.images, stats.kept_images, stats.empty_images) == (3, 3, 1)
    assert mapping.dataset_ids == (2, 7, 40)


def test_a_val_files_degenerate_boxes_are_not_said_to_be_left_out(
        small: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """The scoring reads the file as pycocotools does: its degenerate boxes are objects that
    no detection matches, not "left out" as training leaves them. Which they are is named
    (a good polygon on a zero-width box was lost without its id)."""
    with caplog.at_level(logging.INFO):
        load_coco_json(*small, evaluation=True)
        load_coco_json(*small)
    # (the fixture's 0.5 pixel wide box, its box outside the image, its zero width)
    assert [r.getMessage().split("; ", 1)[1] for r in caplog.records
            if r.levelno == logging.INFO] == [
        "crowd regions: 2 (ignored by the scoring), degenerate boxes: 3 (annotation ids "
        "[3, 4, 5]: objects that no detection matches, as pycocotools scores them)",
        "left out 2 crowd and 3 degenerate boxes (annotation ids [3, 4, 5])"]


def test_objects_marked_ignore_are_left_out_of_training_and_said_to_be_scored(
        small: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """mmdetection leaves out objects marked "ignore": 1; they were trained on here without
    a word. The scoring (pycocotools) reads iscrowd alone: they stay objects there."""
    ann_file, img_dir = small
    data = json.loads(ann_file.read_text())
    data["annotations"][6]["ignore"] = 1  # image 2's only object
    data["annotations"][1]["ignore"] = 1
    data["annotations"][5]["ignore"] = 1  # a crowd region: counted as one
    ann_file.write_text(json.dumps(data))
    records, _, stats = load_coco_json(ann_file, img_dir)
    np.testing.assert_array_equal(records[0]["boxes"], [[0, 10, 15, 20]])
    assert records[1]["boxes"].shape == (0, 4)
    assert (stats.crowd, stats.ignored, stats.boxes) == (2, 2, 1)
    assert ("ann.json: 2 objects marked \"ignore\": 1 are left out of training, as mmdetection "
            "leaves them out") in [r.getMessage().split(os.sep)[-1] for r in caplog.records
                                   if r.levelno >= logging.WARNING]
    caplog.clear()
    records, _, stats = load_coco_json(ann_file, img_dir, evaluation=True)
    assert [len(r["boxes"]) for r in records] == [2, 1, 0] and stats.ignored == 2
    assert "marked \"ignore\"" not in caplog.text  # (the scoring says it, below, on every path)
    # the scoring's ground truth, as `tools/eval.py --results` reads it: it said nothing
    with pytest.warns(RuntimeWarning, match="2 objects marked \"ignore\": 1 are scored as "
                                            "objects \\(pycocotools reads iscrowd alone"):
        ground_truth(ann_file, "bbox")
    # an LVIS val file: its AP reads neither flag (lvis-api leaves "ignore": 1 out); marking
    # them iscrowd, as the COCO wording says, changed nothing there
    for img in data["images"]:
        img.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    ann_file.write_text(json.dumps(data))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_coco_json(ann_file, img_dir, evaluation=True)
    assert "crowd regions: 2 (scored as objects: LVIS's AP reads no iscrowd, as lvis-api)" in (
        caplog.text)
    with pytest.warns(RuntimeWarning) as said:
        ground_truth(ann_file, "bbox")
    assert any("2 objects marked \"ignore\": 1 are scored as objects (LVIS's AP here reads "
               "neither \"ignore\" nor \"iscrowd\"; lvis-api makes \"ignore\": 1 objects regions "
               "where a detection counts neither way: its AP on this file differs"
               in str(w.message) for w in said)


def test_boxes_written_as_corners_are_warned_of(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A trial's converter wrote [x1, y1, x2, y2]: the boxes, clipped, trained and scored
    without a word (box AP 0.3 against a mask AP of 35.7). A tenth of the boxes reaching past
    their images is warned of; boxes within them, or a few past, are not."""
    _write_png(tmp_path / "images" / "a.png", _pattern(30, 40))
    images = [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}]
    corners = [[2, 3, 12, 10], [20, 5, 38, 29], [25, 1, 35, 8]]  # x1, y1, x2, y2
    as_coco = tmp_path / "corners.json"
    seven = [{"id": 7, "name": "seven"}]
    as_coco.write_text(json.dumps(_coco(images, [_ann(i, 1, b) for i, b in enumerate(corners)],
                                        seven)))
    inside = tmp_path / "inside.json"
    inside.write_text(json.dumps(_coco(images, [
        *(_ann(i, 1, [x1, y1, x2 - x1, y2 - y1]) for i, (x1, y1, x2, y2) in enumerate(corners)),
        *(_ann(10 + i, 1, [30, 20, 11, 11]) for i in range(2)),  # one pixel past: within
        *(_ann(20 + i, 1, [5, 5, 3, 3]) for i in range(18)),
        _ann(40, 1, [30, 20, 12, 10])], seven)))  # one box past in 24: under a tenth
    with caplog.at_level(logging.WARNING):
        load_coco_json(inside, tmp_path / "images", training=True)
        assert not caplog.records
        load_coco_json(as_coco, tmp_path / "images", evaluation=True)
    # (the second box: 20 + 38 > 41; the third: 25 + 35 > 41; the first, 2 + 12, is inside)
    assert [r.getMessage() for r in caplog.records] == [
        f"{as_coco}: 2 of 3 boxes reach beyond their image (x + width past its width, or y + "
        f"height past its height): are they [x1, y1, x2, y2]? COCO boxes are [x, y, width, "
        f"height]; they are clipped to their images (or boxes of resized images?)"]


def test_a_file_listed_under_two_image_ids_is_warned_of(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A bad merge listed one file under two ids, its objects split between them: each entry
    trained with the other's objects as background, without a word."""
    _write_png(tmp_path / "images" / "a.png", _pattern(30, 40))
    _write_png(tmp_path / "images" / "b.png", _pattern(30, 40))
    images = [{"id": 1, "file_name": "a.png", "height": 30, "width": 40},
              {"id": 5, "file_name": "b.png", "height": 30, "width": 40},
              {"id": 9, "file_name": "./a.png", "height": 30, "width": 40}]
    ann_file = tmp_path / "merged.json"
    ann_file.write_text(json.dumps(_coco(images, [_ann(1, 1, [2, 2, 5, 5]),
                                                  _ann(2, 9, [20, 10, 5, 5])])))
    with caplog.at_level(logging.WARNING):
        load_coco_json(ann_file, tmp_path / "images")
    assert [r.getMessage() for r in caplog.records] == [
        f"{ann_file}: 1 image files are listed under more than one image id, e.g. 'a.png' "
        f"(ids [1, 9]): each entry is trained and scored as its own image, the other entries' "
        f"objects as background; give each file one entry with all its objects"]


def test_an_image_named_in_another_unicode_form_is_named_with_it(tmp_path: Path) -> None:
    """A JSON written on Linux (é composed) for files copied from a Mac (é decomposed): the
    missing path printed looks like the file on disk."""
    import unicodedata
    composed = unicodedata.normalize("NFC", "café.png")
    decomposed = unicodedata.normalize("NFD", composed)
    _write_png(tmp_path / "images" / decomposed, _pattern(30, 40))
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": composed, "height": 30, "width": 40}], [])))
    with pytest.raises(DatasetError) as refused:
        load_coco_json(ann_file, tmp_path / "images")
    assert str(refused.value).endswith(
        f"image file not found for images[0] (id=1): {tmp_path / 'images' / composed} (on "
        f"disk as {tmp_path / 'images' / decomposed}, its accents decomposed: the same letters "
        f"encoded otherwise; write the names in one Unicode form, e.g. NFC)")


def test_a_box_with_an_infinite_or_nan_number_is_degenerate_and_named(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Python's JSON reads Infinity and NaN: a width of Infinity was clipped to the image's
    edge and trained as a box; then counted with the boxes under a pixel, no entry named."""
    _write_png(tmp_path / "images" / "a.png", _pattern(30, 40))
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
        [_ann(1, 1, [2, 2, float("inf"), 5]), _ann(2, 1, [float("nan"), 2, 5, 5]),
         _ann(3, 1, [1, 1, 4, 4]), _ann(4, 1, [1, 1, 0.5, 4])])))
    with caplog.at_level(logging.WARNING):
        records, _, stats = load_coco_json(ann_file, tmp_path / "images", training=True)
    np.testing.assert_array_equal(records[0]["boxes"], [[1, 1, 5, 5]])
    assert stats.degenerate == 3
    assert [r.getMessage() for r in caplog.records if "NaN" in r.getMessage()] == [
        f"{ann_file}: 2 boxes hold NaN or infinite numbers, left out (a broken export?): "
        "annotation id=1 (image id=1, a.png): bbox [2, 2, inf, 5]; annotation id=2 (image "
        "id=1, a.png): bbox [nan, 2, 5, 5]"]


def test_a_category_without_usable_objects_is_named(tmp_path: Path, small: tuple[Path, Path],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Roboflow's exports carry an unused category 0 named like the dataset: it silently
    became a class the model predicts and whose AP is nan."""
    data = json.loads(small[0].read_text())
    data["categories"].append({"id": 0, "name": "balloons"})
    ann_file = tmp_path / "roboflow.json"
    ann_file.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        load_coco_json(small[0], small[1], training=True)
        load_coco_json(ann_file, small[1])  # a val file: its AP of the class is n/a, no more
        assert "no usable object of" not in caplog.text  # every training category has one
        load_coco_json(ann_file, small[1], training=True)
    # (a class of val objects was said to have an AP of n/a: it scores about 0)
    assert (f"{ann_file}: no usable object of 'balloons' (id 0): a class all the same, which "
            f"the model never learns (its AP is n/a where the val data has none of it, else "
            f"about 0, lowering the mean AP); where it is none, drop it from 'categories' of "
            f"the training and the val files, or name the classes to train in data.classes"
            ) in caplog.text
    # a class whose objects are all crowd regions (CVAT's masks): the hint said to drop it
    category = data["categories"][0]
    for ann in data["annotations"]:
        if ann["category_id"] == category["id"]:
            ann["iscrowd"] = 1
    crowded = [a for a in data["annotations"] if a["category_id"] == category["id"]]
    ann_file.write_text(json.dumps(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_coco_json(ann_file, small[1], training=True)
    assert (f"{ann_file}: no usable object of 'balloons' (id 0), {category['name']!r} (id "
            f"{category['id']}: its {len(crowded)} objects are all crowd regions, \"iscrowd\": "
            f"1, which training leaves out as detectron2 does; CVAT exports masks so: where "
            f"they are objects, set iscrowd 0): a class all the same") in caplog.text


def test_many_categories_without_objects_are_named_in_a_line_of_reasonable_length(
        tmp_path: Path, small: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """An LVIS-like file with 1123 empty categories logged a 39 KB line: ten are named, and
    how many there are."""
    data = json.loads(small[0].read_text())
    data["categories"] += [{"id": 1000 + k, "name": f"empty{k}"} for k in range(25)]
    ann_file = tmp_path / "sparse.json"
    ann_file.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        load_coco_json(ann_file, small[1], training=True)
    (said,) = [r.getMessage() for r in caplog.records if "no usable object of" in r.getMessage()]
    assert (f"{ann_file}: no usable object of "
            + ", ".join(f"'empty{k}' (id {1000 + k})" for k in range(10))
            + ", ... (25 in all): a class all the same") in said


def test_categories_named_alike_but_for_case_are_warned_of(
        tmp_path: Path, small: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """'Dog' and 'dog ' (two exports merged) trained as two classes without a word."""
    data = json.loads(small[0].read_text())
    first = data["categories"][0]
    data["categories"].append({"id": 77, "name": f" {first['name'].upper()} "})
    data["annotations"].append({**data["annotations"][0], "id": 999, "category_id": 77})
    ann_file = tmp_path / "twins.json"
    ann_file.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        load_coco_json(small[0], small[1], training=True)
        assert "categories of the same name" not in caplog.text
        load_coco_json(ann_file, small[1], training=True)
    assert (f"{ann_file}: categories of the same name, or of names differing only in case or "
            f"spaces: {first['name']!r} "
            f"(id {first['id']}), ' {first['name'].upper()} ' (id 77): each is a class"
            in caplog.text)


def test_empty_images_kept_by_default_dropped_on_request(small: tuple[Path, Path]) -> None:
    records, _, stats = load_coco_json(*small, filter_empty=True)
    assert [r["image_id"] for r in records] == [1, 2]
    assert (stats.kept_images, stats.empty_images) == (2, 1)


@pytest.mark.parametrize("file_name, reason", [
    ("../outside.png", "escapes the image folder"),
    ("sub/../../outside.png", "escapes the image folder"),
    ("/etc/passwd", "is absolute"),
])
def test_unsafe_file_names_rejected(tmp_path: Path, file_name: str, reason: str) -> None:
    (tmp_path / "images").mkdir()
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(
        [{"id": 5, "file_name": file_name, "height": 10, "width": 10}], [])))
    with pytest.raises(DatasetError) as err:
        load_coco_json(ann_file, tmp_path / "images")
    message = str(err.value)
    assert str(ann_file) in message and "images[0] (id=5)" in message
    assert repr(file_name) in message and reason in message


def test_absolute_file_names_are_refused_with_the_folder_to_strip(tmp_path: Path) -> None:
    """Label Studio's "/data/upload/1/x.jpg" (its server's paths) was refused without a word
    of what to do."""
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "/data/upload/1/a1b2-x.jpg", "height": 10, "width": 10},
         {"id": 2, "file_name": "/data/upload/1/sub/c3d4-y.jpg", "height": 10, "width": 10}],
        [])))
    with pytest.raises(DatasetError) as refused:
        load_coco_json(ann_file, tmp_path)
    assert str(refused.value) == (
        f"{ann_file}: 2 problem(s):\n"
        f"  images[0] (id=1): file_name '/data/upload/1/a1b2-x.jpg' is absolute; file names "
        f"must be relative to the image folder\n"
        f"  images[1] (id=2): file_name '/data/upload/1/sub/c3d4-y.jpg' is absolute; file "
        f"names must be relative to the image folder\n"
        f"the 2 absolute file names lie under /data/upload/1/: write them without it "
        f"(relative to the image folder, which holds what /data/upload/1/ held)")


def test_file_names_escaping_the_folder_are_refused_on_windows_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows' os.path.normpath writes "..\\": the "../" test never matched there."""
    import ntpath

    from resnet_detect.engine.data import coco
    monkeypatch.setattr(coco.os, "path", ntpath)
    for name in ("../etc/x.jpg", "..\\etc\\x.jpg", "a/../../x.jpg"):
        assert coco._unsafe_path_reason(name) == "escapes the image folder ('..')"
    assert coco._unsafe_path_reason("a\\..\\x.jpg") is None


def test_file_name_with_inner_dotdot_that_stays_inside_is_fine(tmp_path: Path) -> None:
    _write_png(tmp_path / "images" / "a.png", _pattern(10, 10))
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "sub/../a.png", "height": 10, "width": 10}], [])))
    records, _, _ = load_coco_json(ann_file, tmp_path / "images")
    assert len(records) == 1


@pytest.mark.parametrize("content, expected", [
    ("{not json", ["not valid JSON"]),
    ("[1, 2]", ["expected a JSON object"]),
    # a results file, a panoptic file: named as such (were "expected a JSON object", and 24
    # problems of missing ids and boxes)
    (json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}]),
     ["is a results file (a list of detections, as tools/eval.py writes), not a COCO "
      "annotation file"]),
    (json.dumps({"images": [], "categories": [], "annotations": [
        {"image_id": 1, "file_name": "1.png", "segments_info": []}]}),
     ["is a COCO panoptic file (segments_info)"]),
    (json.dumps({"images": [], "categories": []}), ["annotations"]),
    (json.dumps({"annotations": [], "categories": [{"id": 1, "name": "x"}]}), ["images"]),
    (json.dumps(_coco([{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
                      [_ann(11, 1, [0, 0, 5, 5], category_id=99)])),
     ["annotations[0] (id=11)", "category_id 99", "known ids: [2, 7, 40]"]),
    (json.dumps(_coco([{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
                      [_ann(12, 8, [0, 0, 5, 5])])),
     ["annotations[0] (id=12)", "image_id 8 is not in 'images'"]),
    (json.dumps(_coco([{"id": 1, "file_name": "a.png", "width": 40}], [])),
     ["images[0] (id=1)", "'height'"]),
    (json.dumps(_coco([{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
                      [_ann(13, 1, [0, 0, 5])])),
     ["annotations[0] (id=13)", "bbox must be 4 numbers"]),
    (json.dumps(_coco([{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
                      [_ann(14, 1, [0, 0, 5, True]), _ann(15, 1, [0, "0", 5, 5])])),
     ["annotations[0] (id=14)", "annotations[1] (id=15)", "bbox must be 4 numbers"]),
    (json.dumps(_coco([{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
                      [{**_ann(16, 1, [0, 0, 5, 5]), "iscrowd": "0"}])),  # was taken as crowd
     ["annotations[0] (id=16)", "iscrowd must be 0 or 1, got '0'"]),
    (json.dumps(_coco([{"id": 1, "file_name": "a.png", "height": 30, "width": 40}] * 2, [])),
     ["images[1] (id=1)", "duplicate id 1"]),
    # pycocotools compared them with the area ranges: a TypeError after the whole inference
    (json.dumps(_coco([{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
                      [{**_ann(17, 1, [0, 0, 5, 5]), "area": "25"},
                       {**_ann(18, 1, [0, 0, 5, 5]), "area": [25]}])),
     ["annotations[0] (id=17)", "area must be a number (or null or left out", "got '25'",
      "annotations[1] (id=18)", "got [25]"]),
])
def test_bad_json_errors_name_file_and_entry(tmp_path: Path, content: str,
                                             expected: list[str]) -> None:
    _write_png(tmp_path / "images" / "a.png", _pattern(30, 40))
    ann_file = tmp_path / "bad.json"
    ann_file.write_text(content)
    with pytest.raises(DatasetError) as err:
        load_coco_json(ann_file, tmp_path / "images")
    assert str(ann_file) in str(err.value)
    for text in expected:
        assert text in str(err.value)


def test_loading_leaves_the_garbage_collector_as_it_was(
        small: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector is off while a COCO file is parsed (half the time to load train2017);
    it must come back on, also when the file is refused."""
    ann_file, img_dir = small
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    states = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text: states.append(gc.isenabled())
                        or real_loads(text))
    assert gc.isenabled()
    load_coco_json(ann_file, img_dir)
    assert states == [False] and gc.isenabled()
    with pytest.raises(DatasetError):
        load_coco_json(bad, img_dir)
    assert gc.isenabled()
    gc.disable()
    try:
        load_coco_json(ann_file, img_dir)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_missing_annotation_file_and_image_folder(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=rf"annotation file not found: {tmp_path}/nope"
                                                r"\.json$"):
        load_coco_json(tmp_path / "nope.json", tmp_path)
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco([], [])))
    with pytest.raises(DatasetError, match="image folder not found: .*no_images"):
        load_coco_json(ann_file, tmp_path / "no_images")
    # the configs' relative paths, from a tool run in another folder: where they were sought
    monkeypatch.chdir(tmp_path / "..")
    with pytest.raises(FileNotFoundError, match=rf"annotation file not found: datasets/a.json "
                                                rf"\(in {tmp_path.parent}\)"):
        load_coco_json("datasets/a.json", "datasets/images")
    with pytest.raises(DatasetError, match=rf"image folder not found: images \(in "
                                           rf"{tmp_path.parent}\) \(for {ann_file}\)"):
        load_coco_json(ann_file, "images")


def test_missing_image_files_listed_before_training(small: tuple[Path, Path]) -> None:
    ann_file, img_dir = small
    (img_dir / "sub" / "b.png").unlink()
    (img_dir / "c.png").unlink()
    with pytest.raises(DatasetError) as err:
        load_coco_json(ann_file, img_dir)
    message = str(err.value)
    assert "2 problem(s)" in message
    assert f"images[1] (id=2): {img_dir / 'sub' / 'b.png'}" in message
    assert f"images[2] (id=3): {img_dir / 'c.png'}" in message


# ---- decoding -------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_honoured(tmp_path: Path, orientation: int) -> None:
    stored = _pattern(24, 40)
    path = tmp_path / "exif.jpg"
    pil = Image.fromarray(stored)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(path, exif=exif.tobytes(), quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == expected.shape
    assert image.shape[:2] == ((40, 24) if orientation >= 5 else (24, 40))
    # JPEG decoders may differ by a level or two; a wrong orientation differs by ~100
    assert np.abs(image.astype(int) - expected).mean() < 2.0
    if orientation != 1 and image.shape == stored.shape:
        assert np.abs(image.astype(int) - stored).mean() > 30


def test_grayscale_and_rgba_become_rgb(tmp_path: Path) -> None:
    gray = _pattern(12, 16)[..., 0]
    assert cv2.imwrite(str(tmp_path / "gray.png"), gray)
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (12, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], gray)
    rgba = np.concatenate([_pattern(12, 16), np.full((12, 16, 1), 77, np.uint8)], axis=2)
    assert cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])


# ---- transforms -----------------------------------------------------------------------------

@pytest.mark.parametrize("size, short, max_size, expected", [
    ((480, 640), 800, 1333, (800, 1067)),   # 640 * 800 / 480 = 1066.67
    ((640, 480), 800, 1333, (1067, 800)),
    ((400, 1200), 800, 1333, (444, 1333)),  # long side capped: 400 * 1333 / 1200 = 444.33
    ((800, 1067), 800, 1333, (800, 1067)),
    ((500, 500), 600, 1000, (600, 600)),
    ((300, 1000), 600, None, (600, 2000)),
    ((4, 5), 2, None, (2, 3)),              # 2.5 rounds half up, not to even
    ((3, 5000), 320, 533, (1, 533)),        # a panorama: 0.32 px, kept at 1 (was 0: cv2 error)
])
def test_resized_shape_matches_shortest_edge_semantics(size: tuple[int, int], short: int,
                                                       max_size: int | None,
                                                       expected: tuple[int, int]) -> None:
    assert resized_shape(*size, short, max_size) == expected


def test_resize_scales_image_and_boxes() -> None:
    transform = build_transforms(min_size=800, max_size=1333)
    out = transform(image=_pattern(480, 640), bboxes=np.array([[64, 48, 640, 480]], np.float32),
                    box_ids=np.arange(1))
    assert out["image"].shape == (800, 1067, 3)
    # x scales by 1067 / 640 and y by 800 / 480; albumentations computes in float32
    np.testing.assert_allclose(out["bboxes"], [[106.7, 80, 1067, 800]], rtol=0, atol=1e-4)


def test_no_resize_passes_image_and_boxes_through_without_a_warning() -> None:
    """Test-time augmentation and tiles resize each view themselves: the dataset's transform
    then has no resize, and albumentations warned of box parameters without a transform."""
    image = _pattern(48, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transform = build_transforms(min_size=None, max_size=None)
        out = transform(image=image, bboxes=np.array([[3, 4, 50, 40]], np.float32),
                        box_ids=np.arange(1))
    np.testing.assert_array_equal(out["image"], image)
    np.testing.assert_allclose(out["bboxes"], [[3, 4, 50, 40]], rtol=0, atol=1e-4)
    assert list(out["box_ids"]) == [0]


def test_multiscale_training_sizes_come_from_the_list() -> None:
    transform = build_transforms(min_size=(200, 300), max_size=1000)
    seen = set()
    for seed in range(20):
        transform.set_random_seed(seed)
        seen.add(transform(image=_pattern(100, 150), bboxes=np.zeros((0, 4)),
                           box_ids=np.arange(0))["image"].shape[:2])
    assert seen == {(200, 300), (300, 450)}


def test_large_scale_jitter_resizes_by_a_drawn_factor_then_crops_to_the_square() -> None:
    """data.train.jitter_size (detectron2's LSJ: ResizeScale, the flip, FixedSizeCrop): the
    image fits the square times a factor in jitter_scale, a window of at most the square is
    cut from it at random, and the boxes are cut at its edges (those outside dropped)."""
    image = _pattern(100, 50)
    boxes = np.array([[0, 0, 10, 10], [5, 60, 30, 90], [0, 45, 50, 55], [10, 0, 20, 100]],
                     np.float32)
    transform = build_transforms(min_size=800, max_size=1333, jitter=(64, (0.5, 2.0)))
    factors, cropped = [], 0
    for seed in range(40):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = transform(image=image, bboxes=boxes, box_ids=np.arange(4))
        (resize, resized), (crop, cut) = out["applied_transforms"]
        assert (resize, crop) == ("ResizeScale", "RandomCropAtMost")
        new_h, new_w = resized["new_shape"]
        factor = new_h / 100 * 100 / 64  # of the square: the long side is new_h
        assert 0.5 - 0.01 <= factor <= 2.0 + 0.01 and abs(new_w - new_h / 2) <= 0.5  # aspect
        factors.append(factor)
        x0, y0, x1, y1 = cut["crop_coords"]
        assert (y1 - y0, x1 - x0) == (min(new_h, 64), min(new_w, 64))
        assert 0 <= x0 and x1 <= new_w and 0 <= y0 and y1 <= new_h
        cropped += new_h > 64
        expected = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)[y0:y1, x0:x1]
        np.testing.assert_array_equal(out["image"], expected)
        moved = boxes * np.array([new_w / 50, new_h / 100] * 2, np.float32)
        moved = np.clip(moved - np.array([x0, y0] * 2), 0, [x1 - x0, y1 - y0] * 2)
        kept = np.flatnonzero((moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1]))
        assert list(out["box_ids"]) == kept.tolist()
        np.testing.assert_allclose(np.reshape(out["bboxes"], (-1, 4)), moved[kept], atol=1e-3)
    assert min(factors) < 0.7 and max(factors) > 1.8 and 5 < cropped < 40


@pytest.mark.parametrize("mask_format", ["bitmask", "polygon"])
def test_large_scale_jitter_drops_objects_shrunk_to_no_pixel(tmp_path: Path,
                                                             mask_format: str) -> None:
    """A 4-pixel object at a tenth of the square kept its sub-pixel box and an empty mask
    (detectron2 and mmdetection drop empty instances); a large one stays."""
    _write_png(tmp_path / "a.png", _pattern(200, 300))
    square = lambda x, y, s: [[x, y, x + s, y, x + s, y + s, x, y + s]]  # noqa: E731
    annotations = [_ann(1, 1, [10, 10, 4, 4], segmentation=square(10, 10, 4)),
                   _ann(2, 1, [100, 50, 120, 120], segmentation=square(100, 50, 120))]
    (tmp_path / "a.json").write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "a.png", "height": 200, "width": 300}], annotations)))
    records, _, _ = load_coco_json(tmp_path / "a.json", tmp_path, keep_segmentation=True)
    dataset = DetectionDataset(records, with_masks=True, mask_format=mask_format,
                               transform=build_transforms(min_size=None, max_size=None,
                                                          jitter=(64, (0.1, 0.1))))
    sample = dataset[(0, 0)]
    assert sample["image"].shape[1:] == (4, 6)  # 200 x 300 at 6.4 / 300
    assert sample["gt_classes"].tolist() == [1] and len(sample["gt_masks"]) == 1  # "seven"
    # the large square's box, scaled as the image's sides were: 6 / 300, 4 / 200
    np.testing.assert_allclose(sample["gt_boxes"].numpy(), [[2.0, 1.0, 4.4, 3.4]], atol=1e-4)


# ---- dataset --------------------------------------------------------------------------------

def _dataset(small: tuple[Path, Path], **kwargs: Any) -> DetectionDataset:
    records, _, _ = load_coco_json(*small)
    return DetectionDataset(records, **kwargs)


def test_sample_format_and_exact_flip(small: tuple[Path, Path]) -> None:
    # min_size equal to the short side: scale 1, so the flip alone is visible
    flip = _dataset(small, transform=build_transforms(min_size=30, max_size=None, flip_prob=1.0))
    sample = flip[(0, 123)]
    assert set(sample) == {"image", "image_id", "file_name", "height", "width", "gt_boxes",
                           "gt_classes"}
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 30, 40)
    assert (sample["image_id"], sample["height"], sample["width"]) == (1, 30, 40)
    original = _pattern(30, 40)
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), original[:, ::-1])
    # x -> W - x: [0, 10, 15, 20] -> [25, 10, 40, 20]; [35, 0, 40, 5] -> [0, 0, 5, 5]
    assert sample["gt_boxes"].dtype == torch.float32
    torch.testing.assert_close(sample["gt_boxes"], torch.tensor([[25., 10, 40, 20], [0, 0, 5, 5]]),
                               rtol=0, atol=1e-5)
    assert sample["gt_classes"].tolist() == [2, 0] and sample["gt_classes"].dtype == torch.int64
    empty = flip[(2, 0)]
    assert empty["gt_boxes"].shape == (0, 4) and empty["gt_classes"].shape == (0,)


def test_resize_through_dataset_keeps_original_size(small: tuple[Path, Path]) -> None:
    dataset = _dataset(small, transform=build_transforms(min_size=60, max_size=None))
    sample = dataset[1]  # 40x30 portrait image, box [2, 4, 8, 12]
    assert sample["image"].shape == (3, 80, 60)
    assert (sample["height"], sample["width"]) == (40, 30)
    torch.testing.assert_close(sample["gt_boxes"], torch.tensor([[4., 8, 16, 24]]),
                               rtol=0, atol=1e-5)


def test_augmentation_is_a_function_of_the_key(small: tuple[Path, Path]) -> None:
    dataset = _dataset(small, transform=build_transforms(min_size=30, max_size=None,
                                                         flip_prob=0.5))
    flipped = {}
    for seed in range(12):
        a, b = dataset[(0, seed)], dataset[(0, seed)]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["gt_boxes"], b["gt_boxes"])
        flipped[seed] = bool(a["gt_boxes"][0, 0] > 0)
    assert set(flipped.values()) == {True, False}
    torch.manual_seed(0)
    first = [dataset[0]["gt_boxes"] for _ in range(8)]
    torch.manual_seed(0)
    again = [dataset[0]["gt_boxes"] for _ in range(8)]
    assert all(torch.equal(x, y) for x, y in zip(first, again))


def test_aspect_groups_keep_near_square_images_apart() -> None:
    sizes = [(480, 640), (640, 480), (500, 500), (520, 600), (480, 600), (600, 499), (600, 500)]
    records = [{"height": h, "width": w} for h, w in sizes]
    # 4:3 landscape, 3:4 portrait, square, 1.15 (near-square), 1.25 landscape, 1.202 portrait,
    # 1.2 exactly (near-square)
    assert aspect_groups(records).tolist() == [0, 1, 2, 2, 0, 1, 2]


def test_scale_per_batch_gives_a_batch_one_drawn_scale(small: tuple[Path, Path]) -> None:
    transform = build_transforms(min_size=(30, 60, 90), max_size=None, flip_prob=0.5)
    dataset = _dataset(small, transform=transform, scale_per_batch=True)
    keys = [(0, 11), (2, 5)]
    drawn = {dataset.batch_keys([(0, s), (2, 5)])[0][2] for s in range(30)}
    assert drawn == {30, 60, 90}
    batch = dataset.batch_keys(keys)
    short = batch[0][2]
    assert batch == [(0, 11, short), (2, 5, short)] and dataset.batch_keys(keys) == batch
    for key in batch:  # 40x30 images: the short side becomes the batch's length
        sample = dataset[key]
        assert sample["image"].shape[1] == short and sample["image"].shape[2] == 4 * short // 3
    # image 0's box [0, 10, 15, 20] scales by short / 30 (a flip would move it to the right)
    box = dataset[batch[0]]["gt_boxes"][0] * 30 / short
    assert torch.allclose(box, torch.tensor([0., 10, 15, 20]), atol=1e-3) or \
        torch.allclose(box, torch.tensor([25., 10, 40, 20]), atol=1e-3)
    with pytest.raises(ValueError, match="short_edge must be a positive integer, got 0"):
        dataset[(0, 1, 0)]
    # off: the keys go through unchanged and each image draws its own length
    assert _dataset(small, transform=transform).batch_keys(keys) == keys
    with pytest.raises(ValueError, match="scale_per_batch needs a ResizeShortestEdge"):
        _dataset(small, transform=A.Compose([A.HorizontalFlip(p=1.0)]), scale_per_batch=True)


def test_train_loader_with_scale_per_batch(small: tuple[Path, Path]) -> None:
    transform = build_transforms(min_size=(30, 60, 90), max_size=None, flip_prob=0.5)
    dataset = _dataset(small, transform=transform, scale_per_batch=True)

    def batches(num_workers: int, start_iter: int = 0) -> list[list[dict[str, Any]]]:
        loader = build_train_loader(dataset, batch_size=2, seed=3, num_workers=num_workers,
                                    start_iter=start_iter, group_ids=dataset.group_ids,
                                    rank=0, world_size=1, batch_keys=dataset.batch_keys)
        return list(itertools.islice(iter(loader), 12))

    main = batches(0)
    shapes = [{tuple(s["image"].shape) for s in b} for b in main]
    assert all(len(shape) == 1 for shape in shapes)  # one orientation and one scale per batch
    assert len({min(next(iter(shape))[1:]) for shape in shapes}) == 3
    # workers, and a run resumed at batch 4, get exactly these samples
    for got, want in ((batches(1), main), (batches(0, start_iter=4), main[4:])):
        for b1, b2 in zip(got, want):
            for s1, s2 in zip(b1, b2, strict=True):
                assert torch.equal(s1["image"], s2["image"])
                assert torch.equal(s1["gt_boxes"], s2["gt_boxes"])


def test_masks_follow_the_flip(tmp_path: Path) -> None:
    _write_png(tmp_path / "images" / "a.png", _pattern(20, 30))
    ann = _ann(1, 1, [2, 4, 6, 8], segmentation=[[2, 4, 8, 4, 8, 12, 2, 12]])
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}], [ann])))
    records, _, _ = load_coco_json(ann_file, tmp_path / "images", keep_segmentation=True)
    dataset = DetectionDataset(records, with_masks=True,
                               transform=build_transforms(min_size=20, max_size=None,
                                                          flip_prob=1.0))
    sample = dataset[(0, 0)]
    expected = np.zeros((20, 30), dtype=np.uint8)
    expected[4:12, 30 - 8:30 - 2] = 1
    assert sample["gt_masks"].dtype == torch.uint8
    np.testing.assert_array_equal(sample["gt_masks"].numpy(), expected[None])
    # no resize (test-time augmentation and tiles resize each view): the masks as they are
    still = DetectionDataset(records, with_masks=True,
                             transform=build_transforms(min_size=None, max_size=None))[(0, 0)]
    np.testing.assert_array_equal(still["gt_masks"].numpy(), expected[None, :, ::-1])
    with pytest.raises(ValueError, match=r"with_masks takes a transform that records what it "
                                         r"applied .*got \['Rotate'\]"):  # masks would not turn
        DetectionDataset(records, with_masks=True, transform=A.Compose(
            [A.Rotate(p=1.0), A.ColorJitter()], save_applied_params=True))
    with pytest.raises(ValueError, match="keep_segmentation=True"):
        DetectionDataset(load_coco_json(ann_file, tmp_path / "images")[0], with_masks=True,
                         transform=build_transforms(min_size=20, max_size=None))


def test_a_bare_index_augments_without_moving_torchs_generator(small: tuple[Path, Path]
                                                                ) -> None:
    """An evaluation in the training process (num_workers 0) reads bare indices: drawing a
    seed from torch's generator moved the training's random stream, so eval_period changed
    the trained weights."""
    records, _, _ = load_coco_json(*small)
    dataset = DetectionDataset(records, transform=build_transforms(min_size=[20, 30, 40],
                                                                   max_size=None, flip_prob=0.5))
    state = torch.get_rng_state()
    first = [dataset[i]["image"].shape for i in range(3)]
    assert torch.equal(torch.get_rng_state(), state)
    assert [dataset[i]["image"].shape for i in range(3)] == first  # and the same each time


def test_unreadable_and_mis_sized_images_skipped_with_count(small: tuple[Path, Path],
                                                            caplog: pytest.LogCaptureFixture,
                                                            ) -> None:
    ann_file, img_dir = small
    records, _, _ = load_coco_json(ann_file, img_dir)
    (img_dir / "a.png").write_bytes(b"not an image")              # corrupt after the check
    _write_png(img_dir / "c.png", _pattern(31, 40))                # size differs from the JSON
    dataset = DetectionDataset(records, transform=build_transforms(min_size=30, max_size=None))
    batch = collate([dataset[i] for i in range(3)])
    assert [s["image_id"] for s in batch] == [2]
    assert dataset.num_skipped == 2
    assert str(img_dir / "a.png") in caplog.text and "image id 1" in caplog.text
    assert "40x31 differs from the annotation's 40x30" in caplog.text


# ---- loader ---------------------------------------------------------------------------------

def test_train_loader_yields_lists_of_samples(small: tuple[Path, Path]) -> None:
    dataset = _dataset(small, transform=build_transforms(min_size=30, max_size=None,
                                                         flip_prob=0.5))
    loader = build_train_loader(dataset, batch_size=2, seed=1, group_ids=dataset.group_ids,
                                rank=0, world_size=1)
    batches = list(itertools.islice(iter(loader), 3))
    for batch in batches:
        assert isinstance(batch, list) and len(batch) == 2
        assert len({tuple(s["image"].shape) for s in batch}) == 1   # same orientation
    # a worker process decodes and augments exactly what the main process would
    in_worker = build_train_loader(dataset, batch_size=2, seed=1, num_workers=1,
                                   group_ids=dataset.group_ids, rank=0,
                                   world_size=1)
    again = list(itertools.islice(iter(in_worker), 3))
    for b1, b2 in zip(batches, again, strict=True):
        for s1, s2 in zip(b1, b2, strict=True):
            assert s1["image_id"] == s2["image_id"] and torch.equal(s1["image"], s2["image"])
            assert torch.equal(s1["gt_boxes"], s2["gt_boxes"])


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def test_segmentations_checked_for_masks(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    _write_png(tmp_path / "images" / "a.png", _pattern(20, 30))
    blob = np.zeros((20, 30), dtype=np.uint8)
    blob[3:9, 10:25] = 1
    anns = [
        _ann(1, 1, [2, 4, 6, 8], segmentation=[[2, 4, 8, 4, 8, 12, 2, 12], [1, 1, 3, 3]]),
        _ann(2, 1, [1, 1, 5, 5], segmentation=[[1, 1, 5, 5]]),  # only a 2-point polygon
        _ann(3, 1, [10, 3, 15, 6], segmentation=_rle(blob)),
        _ann(4, 1, [0, 0, 4, 4], segmentation=[]),  # no polygon at all
    ]
    image = {"id": 1, "file_name": "a.png", "height": 20, "width": 30}
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco([image], anns)))
    records, _, stats = load_coco_json(ann_file, tmp_path / "images", keep_segmentation=True)
    assert stats.short_polygons == 2 and stats.no_mask == 2 and stats.boxes == 2
    assert stats.no_mask_ids == [2, 4]  # (named in the warning)
    assert records[0]["segmentations"][0] == [[2, 4, 8, 4, 8, 12, 2, 12]]
    np.testing.assert_array_equal(records[0]["boxes"][1], [10, 3, 25, 9])
    dataset = DetectionDataset(records, with_masks=True,
                               transform=build_transforms(min_size=20, max_size=None))
    sample = dataset[(0, 0)]
    assert sample["gt_masks"].shape == (2, 20, 30)
    np.testing.assert_array_equal(sample["gt_masks"][1].numpy(), blob)
    assert int(sample["gt_masks"][0].sum()) == 6 * 8  # the polygon's 6 x 8 pixels
    # without masks nothing is dropped or checked
    records, _, stats = load_coco_json(ann_file, tmp_path / "images")
    assert len(records[0]["boxes"]) == 4 and stats.short_polygons == stats.no_mask == 0
    # a val file keeps the boxes of the objects without a usable mask, as the bbox evaluation
    # scores them (its summary counted 3 of 4 boxes)
    with caplog.at_level(logging.WARNING):
        records, _, stats = load_coco_json(ann_file, tmp_path / "images",
                                           keep_segmentation=True, evaluation=True)
    assert stats.boxes == 4 and stats.no_mask_ids == [2, 4]
    assert (f"{ann_file}: dropped 2 polygons with fewer than 3 points; 2 objects without a "
            f"usable polygon (annotation ids [2, 4]) kept without a mask (their boxes count)"
            ) in caplog.text
    assert [s is None for s in records[0]["segmentations"]] == [False, True, False, True]


def test_polygon_and_rle_masks_equal_pycocotools_and_survive_our_rle(tmp_path: Path) -> None:
    """Polygons, compressed and uncompressed RLE through the loader give pycocotools' own
    masks, pixel for pixel, and our RLE of them decodes back to the same pixels."""
    from pycocotools import mask as mask_utils

    from resnet_detect.detection.evaluation import mask_to_rle
    height, width = 37, 53
    _write_png(tmp_path / "images" / "a.png", _pattern(height, width))
    yy, xx = np.mgrid[:height, :width]
    ellipse = (((xx - 30) / 14.0) ** 2 + ((yy - 20) / 9.0) ** 2 <= 1).astype(np.uint8)
    column_major = ellipse.flatten(order="F").astype(int)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, column_major, -1])))  # starts with zeros
    uncompressed = {"size": [height, width], "counts": [int(v) for v in runs]}
    triangle_and_quad = [[3.5, 30.2, 20.1, 2.7, 26.8, 34.0], [40, 2, 50, 4, 48, 12, 41, 9]]
    segmentations = [triangle_and_quad, _rle(ellipse), uncompressed]
    anns = [_ann(i + 1, 1, [1, 1, 30, 30], segmentation=seg) for i, seg in enumerate(segmentations)]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "a.png", "height": height, "width": width}], anns)))
    records, _, _ = load_coco_json(ann_file, tmp_path / "images", keep_segmentation=True)
    sample = DetectionDataset(records, with_masks=True,
                              transform=build_transforms(min_size=height, max_size=None))[(0, 0)]
    expected = [mask_utils.decode(mask_utils.merge(
        mask_utils.frPyObjects(triangle_and_quad, height, width))), ellipse, ellipse]
    assert sample["gt_masks"].shape == (3, height, width)
    assert int(expected[0].sum()) > 300  # both polygons drawn, not only the first
    for got, want in zip(sample["gt_masks"].numpy(), expected, strict=True):
        np.testing.assert_array_equal(got, want)
        rle = json.loads(json.dumps(mask_to_rle(got.astype(bool))))
        np.testing.assert_array_equal(mask_utils.decode(rle), want)


@pytest.mark.parametrize(("segmentation", "message"), [
    (None, r"annotation id=1 \(image id=1, a.png\): no 'segmentation'"),
    ({"size": [10, 10], "counts": "abc"}, r"RLE segmentation size \[10, 10\] is not the image's"),
    ({"size": [20, 30]}, "RLE segmentation needs 'counts'"),
    ([[1, 2, 3, 4, 5]], r"a polygon holds an odd count of numbers \(5\), not x, y pairs: "
                        r"\[1, 2, 3, 4, 5\]"),
    ([[1, 2, 3, 4, 5, False]], "a polygon must be a flat list of x, y numbers"),
    ([[1, 2, 3, 4, 5, None]], "a polygon must be a flat list of x, y numbers"),
    ([1, 2, 3, 4, 5, 6], r"segmentation is one flat list of numbers; COCO's polygons are a list "
                         r"of them: wrap it, \[\[x1, y1"),  # as some exporters write it
    ("polygon", "segmentation must be polygons or an RLE, got str"),
    # runs past the image: pycocotools decoded memory after the mask, and its IoU never ended
    ({"size": [20, 30], "counts": [0, 500, 500]}, "RLE segmentation runs cover 1000 pixels, not "
                                              r"the image's 20x30 = 600"),
    ({"size": [20, 30], "counts": [100, 50]}, "runs cover 150 pixels"),  # the rest unset
    ({"size": [20, 30], "counts": [605, -5]}, "uncompressed RLE counts must be integers in 0"),
    ({"size": [20, 30], "counts": "A"}, "RLE segmentation has negative run lengths"),
    ({"size": [20, 30], "counts": [300.0, 300.0]}, "uncompressed RLE counts must be integers"),
    ({"size": [20, 30], "counts": "P13700000l0"}, "runs cover 100 pixels"),  # a 10x10 mask
    ({"size": [20, 30], "counts": "\x01"}, "characters outside the compressed format"),
    ({"size": [20, 30], "counts": "1\u00e9"}, "characters outside the compressed format"),
    ({"size": [20, 30], "counts": "o" * 12 + "0"}, "a run too long for any image"),
    ({"size": [20, 30], "counts": [2**64]}, r"uncompressed RLE counts must be integers in 0..600"),
    # pycocotools segfaulted on a NaN or Infinity and filled the memory on a far point
    ([[1, 2, 3, 4, 5, float("nan")]], r"a polygon has a coordinate that is no finite number "
                                      r"\(NaN or Infinity\): \[1, 2, 3, 4, 5, nan\]"),
    ([[1, 2, 3, 4, 5, float("inf")]], "a polygon has a coordinate that is no finite number"),
    ([[1, 2, 3, 4, 5, 1e12]], "a polygon has a point more than 10 image sizes outside the "
                              "30x20 image"),
    ([[1, 2, 3, 4, -301, 6]], "more than 10 image sizes outside"),
])
def test_bad_segmentations_fail_naming_file_and_annotation(tmp_path: Path, segmentation: Any,
                                                           message: str) -> None:
    _write_png(tmp_path / "images" / "a.png", _pattern(20, 30))
    ann = _ann(1, 1, [2, 4, 6, 8])
    if segmentation is not None:
        ann["segmentation"] = segmentation
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}], [ann])))
    with pytest.raises(DatasetError, match=rf"{ann_file}: 1 problem.*\n.*{message}"):
        load_coco_json(ann_file, tmp_path / "images", keep_segmentation=True)
    load_coco_json(ann_file, tmp_path / "images")  # fine for boxes only
    if segmentation is None:  # (a crowd region without a mask is its box)
        return
    # a val file's crowd region is scored: its mask was replaced by its box without a word
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}], [{**ann, "iscrowd": 1}])))
    with pytest.raises(DatasetError, match=rf"{ann_file}: 1 problem.*\n  annotation id=1 "
                                           rf"\(image id=1, a.png\), a crowd region: .*{message}"):
        load_coco_json(ann_file, tmp_path / "images", keep_segmentation=True, evaluation=True)
    load_coco_json(ann_file, tmp_path / "images", keep_segmentation=True)  # training skips it


def test_a_file_of_normalised_polygons_is_refused_a_tiny_polygon_is_not(tmp_path: Path) -> None:
    """YOLO's 0..1 coordinates in a COCO file: every mask empty, trained on without a word.
    Judged over the file: an object in a corner, or mostly outside the image, has a polygon
    within 0..1 too (judged alone, it stopped the load)."""
    _write_png(tmp_path / "images" / "a.png", _pattern(20, 30))
    ann_file = tmp_path / "ann.json"
    corner = [[0, 0, 1, 0, 1, 1, 0, 1]]
    outside = [[-3, -3, 1, -3, 1, 1, -3, 1]]
    for segmentations, refused in (([corner, outside, [[2, 2, 9, 2, 9, 9]]], False),
                                   ([[[0.1, 0.2, 0.5, 0.2, 0.5, 0.6]], corner], True)):
        anns = [_ann(i, 1, [-3, -3, 4, 4] if s is outside else [0, 0, 9, 9], segmentation=s)
                for i, s in enumerate(segmentations, 1)]
        ann_file.write_text(json.dumps(_coco(
            [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}], anns)))
        if refused:
            with pytest.raises(DatasetError, match=f"{ann_file}: all its 2 polygons lie within "
                                                   r"0..1: normalised coordinates \(YOLO's\?\)"):
                load_coco_json(ann_file, tmp_path / "images", keep_segmentation=True)
        else:
            records, _, _ = load_coco_json(ann_file, tmp_path / "images", keep_segmentation=True)
            assert len(records[0]["segmentations"]) == 3


@pytest.mark.parametrize("centred", [False, True])
def test_object_masks_are_flipped_then_resized_as_torchvisions_pipeline(
        tmp_path: Path, centred: bool) -> None:
    """Each object's mask resized and flipped on its own (stacked at full size, a dense
    image's masks took gigabytes), for polygons and RLE, up and down: pixel for pixel the
    full-size mask flipped, then resized to the sample's size by the nearest pixel (from the
    corner, torchvision's; `aligned_masks`: centred, detectron2's). albumentations flips
    after the resize, which mirrors the resize's half pixel: its flipped masks differ."""
    from pycocotools import mask as mask_utils
    rng = np.random.default_rng(0)
    height, width = 45, 70
    _write_png(tmp_path / "images" / "a.png", _pattern(height, width))
    blob = (rng.random((height, width)) < 0.3).astype(np.uint8)
    anns = [_ann(1, 1, [3, 4, 30, 20], segmentation=[[3.2, 4.1, 33, 6.5, 20.7, 24.9]]),
            _ann(2, 1, [0, 0, 70, 45], segmentation=_rle(blob)),
            _ann(3, 1, [40, 10, 20, 30], segmentation=[[40, 10, 60, 12, 58, 40, 41, 39]])]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "a.png", "height": height, "width": width}], anns)))
    records, _, _ = load_coco_json(ann_file, tmp_path / "images", keep_segmentation=True)
    transform = build_transforms(min_size=[23, 45, 61], max_size=None, flip_prob=0.5)
    dataset = DetectionDataset(records, with_masks=True, transform=transform,
                               aligned_masks=centred)
    full = [mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(s, height, width)))
            if isinstance(s, list) else mask_utils.decode(s) for s in records[0]["segmentations"]]
    seen, albumentations_differs = set(), False
    for seed in range(30):
        sample = dataset[(0, seed)]
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        moved = transform(image=read_image(records[0]["file_name"]), bboxes=records[0]["boxes"],
                          box_ids=np.arange(3), masks=full)
        flipped = "HorizontalFlip" in dict(moved["applied_transforms"])
        size = sample["image"].shape[2], sample["image"].shape[1]
        expected = np.stack([cv2.resize(np.ascontiguousarray(m[:, ::-1] if flipped else m),
                                        size, interpolation=cv2.INTER_NEAREST_EXACT if centred
                                        else cv2.INTER_NEAREST) for m in full])
        np.testing.assert_array_equal(sample["gt_masks"].numpy(), expected)
        albumentations_differs |= not np.array_equal(expected, np.stack(moved["masks"]))
        seen.add((sample["image"].shape[1], flipped))
    assert len(seen) == 6  # every scale, flipped and not
    assert albumentations_differs


def test_compressed_rle_counts_read_as_pycocotools_writes_them() -> None:
    from pycocotools import mask as mask_utils
    rng = np.random.default_rng(0)
    for trial in range(60):
        height, width = (int(v) for v in rng.integers(1, 120, 2))
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        mask[:, : trial % 3] = trial % 2  # runs longer than a column, first pixel either
        rle = mask_utils.encode(np.asfortranarray(mask))
        column_major = mask.flatten(order="F").astype(int)
        runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, column_major, -1])))
        if column_major[0] == 1:
            runs = np.r_[0, runs]  # COCO's runs start with the zeros
        assert rle_string_counts(rle["counts"].decode()).tolist() == runs.tolist()


def test_image_sizes_checked_against_the_entries(small: tuple[Path, Path], tmp_path: Path) -> None:
    """A val image whose entry has another size was first met by the evaluation after
    training, which skipped it and scored its objects as missed. Sizes are as read_image
    gives them: an EXIF-rotated JPEG turned, one whose orientation is only in XMP (which
    Pillow's getexif() takes and OpenCV does not apply) as stored: the header's size too (the
    converters took XMP's, and training then skipped every such image as mis-sized)."""
    ann_file, img_dir = small
    records, _, _ = load_coco_json(ann_file, img_dir)
    check_image_sizes(records, ann_file)
    exif = Image.Exif()
    exif[0x0112] = 6  # 40x24 stored, shown 24x40
    Image.fromarray(_pattern(24, 40)).save(img_dir / "rotated.jpg", exif=exif)
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
           b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
           b'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    Image.fromarray(_pattern(24, 40)).save(img_dir / "xmp.jpg", xmp=xmp)
    assert read_image(img_dir / "xmp.jpg").shape[:2] == image_size(img_dir / "xmp.jpg") \
        == (24, 40)
    data = json.loads(ann_file.read_text())
    data["images"][0].update(height=40, width=30)  # a.png is 40x30 (W x H): swapped
    data["images"][2].update(height=31)  # c.png is 40x30
    data["images"] += [{"id": 9, "file_name": "rotated.jpg", "height": 40, "width": 24},
                       {"id": 10, "file_name": "xmp.jpg", "height": 24, "width": 40},
                       {"id": 11, "file_name": "bad.png", "height": 5, "width": 5}]
    (img_dir / "bad.png").write_bytes(b"not a png")  # unreadable: skipped when read, not here
    ann_file.write_text(json.dumps(data))
    records, _, _ = load_coco_json(ann_file, img_dir)
    with pytest.raises(DatasetError) as err:
        check_image_sizes(records, ann_file)
    assert str(err.value) == (
        f"{ann_file}: 2 of 6 images differ in size (width x height, after EXIF rotation) from "
        "their entries; 1 have width and height swapped: the tool that wrote the file took the "
        "stored size of photos that their EXIF orientation turns:\n"
        f"  {img_dir / 'a.png'} (image id 1) is 40x30, its entry says 30x40\n"
        f"  {img_dir / 'c.png'} (image id 3) is 40x30, its entry says 40x31")


def test_mis_sized_training_images_are_listed_up_front_when_a_sample_finds_one(
        small: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Training skipped them at every read, one warning each through the run: where the
    sample of headers read at the start finds one, every image is checked and listed."""
    from resnet_detect.detection.data import splits
    ann_file, img_dir = small
    data = json.loads(ann_file.read_text())
    data["images"][0].update(height=40, width=30)  # a.png is 40x30 (W x H): swapped
    data["images"][2].update(height=31)  # c.png is 40x30
    ann_file.write_text(json.dumps(data))
    records, _, _ = load_coco_json(ann_file, img_dir)
    caplog.clear()  # (the fixture's boxes reaching past their images are warned of)
    with caplog.at_level(logging.WARNING):
        splits.warn_of_mis_sized_images(records, str(ann_file))
    # (an earlier test in the process may leave the package's logger at INFO)
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.getMessage().startswith(f"{ann_file}: 2 of 3 images differ in size")
    assert warning.getMessage().endswith(
        f"  {img_dir / 'c.png'} (image id 3) is 40x30, its entry says 40x31 (in training, "
        "skipped at every read)")
    caplog.clear()
    monkeypatch.setattr(splits, "SIZE_SAMPLE", 1)  # a sample of b.png alone: nothing read more
    records = [r for r in records if r["image_id"] != 1]
    with caplog.at_level(logging.WARNING):
        splits.warn_of_mis_sized_images(records, str(ann_file))
    assert records[np.random.default_rng(0).permutation(2)[0]]["image_id"] == 2  # b.png
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("key, value, message", [
    ("hflip_prob", 2.0, r"data.train.hflip_prob must be a probability in \[0, 1\], got 2.0"),
    ("min_size", -5, r"data.train.min_size must be positive integers \(pixels\), got -5"),
    ("min_size", [640, 0], r"data.train.min_size must be positive integers"),
    ("repeat_threshold", 0, r"data.train.repeat_threshold must be a fraction of the images in "
                            r"\(0, 1\] \(0.001 for LVIS\) or null, got 0"),
    ("repeat_threshold", 1.5, r"data.train.repeat_threshold must be .* got 1.5"),
    ("repeat_threshold", "rare", r"data.train.repeat_threshold must be .* got 'rare'")])
def test_augmentation_values_are_refused_naming_the_key_before_the_data_is_read(
        tmp_path: Path, key: str, value: Any, message: str) -> None:
    """hflip_prob=2 reached albumentations' validation and min_size=-5 the resize, naming
    neither key, after the annotation file was read (here: one that does not exist)."""
    cfg = load_config(CONFIGS / "synthetic/faster_rcnn_R_18_FPN.yaml",
                      [f"data.train.ann_file={tmp_path}/no.json", f"data.train.img_dir={tmp_path}",
                       f"data.train.{key}={json.dumps(value)}"])
    with pytest.raises(ConfigError, match=message):
        build_train_dataset(cfg)


def test_repeat_threshold_gives_images_of_rare_classes_their_factor(tmp_path: Path) -> None:
    """Category 7 is in 3 of the 4 training images, 2 and 40 in one each: at threshold 0.5,
    r(7) = 1 and r(2) = r(40) = sqrt(0.5 / 0.25) = sqrt(2); an image takes its classes'
    largest."""
    img_dir = tmp_path / "images"
    images = []
    for i in range(4):
        _write_png(img_dir / f"{i}.png", _pattern(30, 40))
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 30, "width": 40})
    annotations = [_ann(1, 1, [1, 1, 9, 9]), _ann(2, 2, [1, 1, 9, 9]),
                   _ann(3, 2, [12, 1, 9, 9], category_id=2), _ann(4, 3, [1, 1, 9, 9]),
                   _ann(5, 4, [1, 1, 9, 9], category_id=40), _ann(6, 4, [12, 1, 9, 9],
                                                                  category_id=40)]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(images, annotations)))
    overrides = [f"data.train.ann_file={ann_file}", f"data.train.img_dir={img_dir}"]
    cfg = load_config(CONFIGS / "synthetic/faster_rcnn_R_18_FPN.yaml",
                      [*overrides, "data.train.repeat_threshold=0.5"])
    train, _, _ = build_train_dataset(cfg)
    np.testing.assert_allclose(train.repeat_factors, [1.0, 2 ** 0.5, 1.0, 2 ** 0.5])
    plain, _, _ = build_train_dataset(load_config(
        CONFIGS / "synthetic/faster_rcnn_R_18_FPN.yaml", overrides))
    assert plain.repeat_factors is None


def test_an_lvis_file_names_its_images_by_their_coco_url(tmp_path: Path) -> None:
    """LVIS v1 has no file_name: its images are COCO's, in the folder the URL names under
    the image folder (detectron2's reading), train2017/ and val2017/ mixed in one split."""
    img_dir = tmp_path / "coco"
    images = []
    for i, folder in enumerate(("train2017", "val2017")):
        _write_png(img_dir / folder / f"{i:012d}.png", _pattern(30, 40))
        images.append({"id": i + 1, "height": 30, "width": 40, "neg_category_ids": [],
                       "coco_url": f"http://images.cocodataset.org/{folder}/{i:012d}.png"})
    annotations = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 9, 9], "area": 81},
                   {"id": 2, "image_id": 2, "category_id": 2, "bbox": [2, 2, 9, 9], "area": 81}]
    categories = [{"id": 7, "name": "seven", "frequency": "f"},
                  {"id": 2, "name": "two", "frequency": "r"}]
    ann_file = tmp_path / "lvis_v1_train.json"
    ann_file.write_text(json.dumps(_coco(images, annotations, categories)))
    records, _, stats = load_coco_json(ann_file, img_dir, training=True)
    assert [r["file_name"] for r in records] == [
        str(img_dir / "train2017/000000000000.png"), str(img_dir / "val2017/000000000001.png")]
    assert stats.boxes == 2
    # a mirror's URL: percent-encoded, with a query and a fragment
    _write_png(img_dir / "my images" / "a b.png", _pattern(30, 40))
    images[0]["coco_url"] = "https://mirror.example/my%20images/a%20b.png?raw=1#top"
    ann_file.write_text(json.dumps(_coco(images, annotations, categories)))
    records, _, _ = load_coco_json(ann_file, img_dir, training=True)
    assert records[0]["file_name"] == str(img_dir / "my images" / "a b.png")
    from resnet_detect.engine.data.coco import _file_name_from_url
    assert _file_name_from_url("train2017/img#2.jpg") == "train2017/img#2.jpg"  # no URL
    assert _file_name_from_url("//train2017/100%25.jpg") == "train2017/100%25.jpg"
    # a file_name of null is as none: the URL names the file
    images[1]["file_name"] = None
    ann_file.write_text(json.dumps(_coco(images, annotations, categories)))
    records, _, _ = load_coco_json(ann_file, img_dir, training=True)
    assert records[1]["file_name"] == str(img_dir / "val2017/000000000001.png")
    del images[1]["file_name"]
    # an empty URL is no name: the image's missing file_name is what is reported
    images[0]["coco_url"] = ""
    ann_file.write_text(json.dumps(_coco(images, annotations, categories)))
    with pytest.raises(DatasetError, match=r"images\[0\] \(id=1\): missing or invalid "
                                           r"'file_name' \(expected str, got None\), and its "
                                           r"coco_url '' names no image file") as err:
        load_coco_json(ann_file, img_dir, training=True)
    assert "is empty" not in str(err.value)


def test_lvis_v05_names_of_coco_2014_are_read_from_their_coco_url(tmp_path: Path,
                                                                  caplog) -> None:
    """LVIS v0.5 names its images COCO_train2014_<id>.jpg beside a coco_url of COCO 2017's
    folders: all were "image file not found" in a COCO 2017 tree (detectron2 reads by
    coco_url). A file_name found where it says keeps winning."""
    img_dir = tmp_path / "coco"
    _write_png(img_dir / "train2017" / "000000000001.jpg", _pattern(30, 40))
    _write_png(img_dir / "COCO_train2014_000000000002.jpg", _pattern(30, 40))
    _write_png(img_dir / "train2017" / "000000000002.jpg", _pattern(30, 40))
    images = [{"id": i, "height": 30, "width": 40, "neg_category_ids": [],
               "file_name": f"COCO_train2014_{i:012d}.jpg",
               "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg"}
              for i in (1, 2)]
    annotations = [{"id": i, "image_id": i, "category_id": 7, "bbox": [1, 1, 9, 9], "area": 81}
                   for i in (1, 2)]
    ann_file = tmp_path / "lvis_v0.5_train.json"
    ann_file.write_text(json.dumps(_coco(images, annotations,
                                         [{"id": 7, "name": "seven", "frequency": "f"}])))
    with caplog.at_level(logging.INFO):
        records, _, _ = load_coco_json(ann_file, img_dir, training=True)
    assert [r["file_name"] for r in records] == [
        str(img_dir / "train2017/000000000001.jpg"),
        str(img_dir / "COCO_train2014_000000000002.jpg")]
    assert f"{ann_file}: 1 images not found by their file_name are read from the files their " \
           f"coco_url names (LVIS v0.5's COCO 2014 names of COCO 2017's images)" in caplog.text
    # a COCO 2017 name not found (an img_dir one folder too high) is not read by its URL
    images[0]["file_name"] = "000000000001.jpg"
    ann_file.write_text(json.dumps(_coco(images, annotations,
                                         [{"id": 7, "name": "seven", "frequency": "f"}])))
    with pytest.raises(DatasetError, match=r"image file not found for images\[0\]"):
        load_coco_json(ann_file, img_dir, training=True)
    images[0]["file_name"] = "COCO_train2014_000000000001.jpg"
    ann_file.write_text(json.dumps(_coco(images, annotations,
                                         [{"id": 7, "name": "seven", "frequency": "f"}])))
    # where neither is there, both are named (the 2014 name alone sent users to fetch COCO
    # 2014's images)
    (img_dir / "train2017" / "000000000001.jpg").unlink()
    with pytest.raises(DatasetError) as refused:
        load_coco_json(ann_file, img_dir, training=True)
    assert (f"image file not found for images[0] (id=1): "
            f"{img_dir / 'COCO_train2014_000000000001.jpg'}, nor "
            f"{img_dir / 'train2017/000000000001.jpg'} (its coco_url's)") in str(refused.value)


def test_whole_number_floats_are_ids_and_sizes_as_pycocotools_takes_them(
        small: tuple[Path, Path], tmp_path: Path) -> None:
    """"width": 160.0 and "id": 1.0 (pandas' exports write them) were refused; other numbers
    still are."""
    ann_file, img_dir = small
    data = json.loads(ann_file.read_text())
    for section, keys in (("images", ("id", "height", "width")), ("categories", ("id",)),
                          ("annotations", ("id", "image_id", "category_id"))):
        for entry in data[section]:
            entry.update({k: float(entry[k]) for k in keys})
    floats = tmp_path / "floats.json"
    floats.write_text(json.dumps(data))
    assert '"width": 40.0' in floats.read_text()
    def plain(loaded: tuple[Any, ...]) -> tuple[Any, ...]:
        records, mapping = loaded[:2]
        return [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in r.items()}
                for r in records], mapping.dataset_ids

    for training in (True, False):
        records, ids = plain(load_coco_json(floats, img_dir, training=training))
        assert (records, ids) == plain(load_coco_json(ann_file, img_dir, training=training))
        assert len(records) >= 2 and {type(r["image_id"]) for r in records} == {int}
        assert {type(i) for i in ids} == {int}
    data["images"][1]["width"] = 30.5
    floats.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[1\] \(id=2\): missing or invalid "
                                           r"'width' \(expected int, got 30.5\)"):
        load_coco_json(floats, img_dir)


def test_messages_about_many_categories_stay_short(tmp_path: Path) -> None:
    """LVIS: 1203 category ids in every "known ids" made a 62 kB error for 20 bad ids."""
    from resnet_detect.engine.data import brief
    assert brief(list(range(5))) == "[0, 1, 2, 3, 4]"
    assert brief(list(range(1, 1204))) == (
        "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, ... "
        "(1203 in all)]")
    categories = [{"id": i, "name": f"c{i}"} for i in range(1, 1204)]
    images = [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}]
    bad = [_ann(i, 1, [1, 1, 5, 5], category_id=5000) for i in range(1, 21)]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(images, bad, categories)))
    with pytest.raises(DatasetError, match=r"category_id 5000 is not in 'categories' \(known "
                                           r"ids: \[1, 2, .* 20, \.\.\. \(1203 in all\)\]\)"
                       ) as err:
        load_coco_json(ann_file, tmp_path)
    assert len(str(err.value)) < 3000


def test_category_differences_are_told_by_name_and_id() -> None:
    """A name given twice in one file, an id renamed, a class moved, one lacking."""
    from resnet_detect.detection.data.splits import category_differences
    train = CategoryMapping((1, 2, 3, 4), ("a", "b", "c", "d"))
    assert category_differences(train, CategoryMapping((1, 2), ("a", "a"))) == (
        "ids naming other classes ['2: b in training, a in val']; the val file lacks "
        "['c (id 3)', 'd (id 4)']")
    assert category_differences(train, CategoryMapping((1, 2, 3, 5), ("a", "b", "d", "e"))) == (
        "other ids ['d: 4 in training, 3 in val']; the val file lacks ['c (id 3)']; the "
        "training file lacks ['e (id 5)']")
    assert category_differences(CategoryMapping((1, 2, 3), ("a", "a", "b")),
                                CategoryMapping((1, 3), ("a", "b"))) == (
        "the val file lacks ['a (id 2)']")


def test_the_training_file_s_objects_per_category_are_logged(
        small: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """detectron2's "distribution of instances among all categories": the log gave the total
    of boxes alone; beyond 90 categories (LVIS) the most and the fewest."""
    from resnet_detect.engine.data.coco import category_table
    with caplog.at_level(logging.INFO):
        records, mapping, _ = load_coco_json(small[0], small[1], training=True)
    table = caplog.text.split("objects per category (the boxes trained on):\n")[1]
    trained = np.concatenate([r["classes"] for r in records])
    for k, name in enumerate(mapping.names):  # (the file's degenerate boxes left out)
        assert re.search(rf"\b{re.escape(name)} +{int((trained == k).sum())}\b", table), name
    assert f"total: {len(trained)} objects" in table
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_coco_json(small[0], small[1])  # a val file: no table
    assert "objects per category" not in caplog.text
    many = category_table([f"c{i}" for i in range(100)], range(100)).splitlines()
    assert many[0] == ("  100 categories; the 45 with the most objects, then the 45 with the "
                       "fewest (1 with none):")
    assert many[1].split() == ["c99", "99", "c98", "98", "c97", "97"]
    assert many[-2].split() == ["c2", "2", "c1", "1", "c0", "0"]
    assert many[-1] == "  total: 4,950 objects"
    assert many[16].split() == ["...", "...", "..."]  # between the most and the fewest
    long = category_table(["x" * 50, "dog"], [1, 2]).splitlines()[0]
    assert long.split() == ["x" * 27 + "...", "1", "dog", "2"]  # (a name cut at 30)


def test_a_training_scale_far_from_the_tested_one_is_warned_of(
        caplog: pytest.LogCaptureFixture) -> None:
    """data.train.min_size=32, taken for mmdetection's filter of small images ("did you mean
    'min_size'?" answered data.train.min_size_filter), trained at a 32 px short edge and
    tested at 320 without a word."""
    from resnet_detect.detection.data.splits import _warn_of_a_training_scale_far_from_the_tests
    from resnet_detect.engine.tasks import load_task_config
    root = Path(__file__).resolve().parents[2] / "configs"
    for overrides, warned in ((["data.train.min_size=32"], True),
                              (["data.train.min_size=[256,2000]"], False),
                              (["data.train.min_size=[640,800]"], True),
                              (["data.val.min_size=[200,1700]"], True), ([], False)):
        caplog.clear()
        cfg = load_task_config(root / "synthetic/faster_rcnn_R_18_FPN.yaml", overrides)[1]
        _warn_of_a_training_scale_far_from_the_tests(cfg)
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert bool(messages) is warned, overrides
    cfg = load_task_config(root / "synthetic/faster_rcnn_R_18_FPN.yaml",
                           ["data.train.min_size=32"])[1]
    _warn_of_a_training_scale_far_from_the_tests(cfg)
    assert caplog.records[-1].getMessage() == (
        "data.train.min_size=32 (the short edge training images are resized to; not a filter "
        "of small images: there is none) is far from data.val.min_size=320: the model trains "
        "at another scale than it is tested at")


def test_data_classes_keep_those_categories_and_their_objects(
        small: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """mmdetection's metainfo classes: a file's other categories and their objects left out
    (a subset of COCO's categories trained without cutting the file); unknown names named."""
    records, mapping, stats = load_coco_json(*small, classes=["forty", "two"])
    assert (mapping.dataset_ids, mapping.names) == ((2, 40), ("two", "forty"))
    np.testing.assert_array_equal(records[0]["boxes"], [[0, 10, 15, 20], [35, 0, 40, 5]])
    assert records[0]["classes"].tolist() == [1, 0]
    assert [len(r["classes"]) for r in records] == [2, 0, 0] and stats.boxes == 2
    records, _, _ = load_coco_json(*small, classes=["forty"], filter_empty=True)
    assert len(records) == 1
    with pytest.raises(DatasetError, match=r"data.classes names \['Forty'\], not categories "
                                           r"of .*ann.json \(its categories: \['forty', "
                                           r"'seven', 'two'\]\); names are matched as "
                                           r"written, in case too: 'Forty' -> 'forty'\?$"):
        load_coco_json(*small, classes=["Forty", "two"])


def test_data_classes_of_the_tools_reading_a_val_file_themselves() -> None:
    """--results, --confusion-matrix, --error-analysis and tools/analyze_results.py read the
    val file themselves: the chosen categories' objects and results alone; LVIS refused."""
    from omegaconf import OmegaConf

    from resnet_detect.detection.data.splits import classes_subset
    data = _coco([{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
                 [_ann(1, 1, [1, 1, 5, 5], category_id=7), _ann(2, 1, [2, 2, 5, 5],
                                                                category_id=40)])
    results = [{"image_id": 1, "category_id": c, "bbox": [1, 1, 5, 5], "score": 0.5}
               for c in (7, 40, 2)]
    cfg = OmegaConf.create({"data": {"classes": ["seven"]}})
    subset, kept = classes_subset(cfg, data, "val.json", results)
    assert [c["id"] for c in subset["categories"]] == [7]
    assert [a["id"] for a in subset["annotations"]] == [1]
    assert [r["category_id"] for r in kept] == [7] and len(data["annotations"]) == 2
    assert classes_subset(OmegaConf.create({"data": {"classes": None}}), data, "v",
                          results) == (data, results)
    data["categories"][0]["frequency"] = "f"  # an LVIS file
    with pytest.raises(ConfigError, match=r"data.classes is not for LVIS files \(val.json\)"):
        classes_subset(cfg, data, "val.json", results)


def test_loading_a_coco_file_pauses_the_garbage_collector(small: tuple[Path, Path]) -> None:
    """Its repeated passes over COCO's 30 million parsed objects took about 40 % of the
    loading; a decorator moved onto another function once left them running."""
    import gc
    seen = []
    load_coco_json(*small, check=lambda data, path: seen.append(gc.isenabled()))
    assert seen == [False] and gc.isenabled()


def test_a_gzipped_annotation_file_is_named_as_such(tmp_path: Path) -> None:
    import gzip
    ann_file = tmp_path / "train.json.gz"
    ann_file.write_bytes(gzip.compress(json.dumps(_coco([], [])).encode()))
    with pytest.raises(DatasetError, match=r"train.json.gz: not valid JSON \(a gzip file: "
                                           r"decompress it first\)"):
        load_coco_json(ann_file, tmp_path)


def test_polygons_reaching_well_past_their_boxes_are_named(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Polygons drawn at twice the images' size (annotated at full resolution, images shipped
    resized) trained masks that are not their boxes' without a word; COCO's boxes are their
    polygons' extent, a pixel's rounding aside."""
    _write_png(tmp_path / "images" / "a.png", _pattern(40, 60))
    tight = [[10.4, 10.0, 30.0, 10.0, 30.0, 25.6, 10.0, 25.0]]  # the box [10, 10, 20, 15]
    doubled = [[2 * v for v in tight[0]]]
    anns = [_ann(1, 1, [10, 10, 20, 15], segmentation=tight),
            _ann(2, 1, [10, 10, 20, 15], segmentation=doubled),
            _ann(3, 1, [9, 9, 22, 17], segmentation=tight),  # a looser box: fine
            # a shape past the image's edge, its box clipped to the image (labelme_to_coco's
            # circles): fine within the image
            _ann(4, 1, [0, 5, 20, 10], segmentation=[[-30, 5, 20, 5, 20, 15, -30, 15]]),
            # a corner object's polygon at twice the size: wholly past the image
            _ann(5, 1, [50, 30, 10, 10], segmentation=[[100, 60, 120, 60, 120, 80, 100, 80]])]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}], anns)))
    with caplog.at_level(logging.WARNING):
        load_coco_json(ann_file, tmp_path / "images", keep_segmentation=True)
    assert (f"{ann_file}: 2 objects have a polygon reaching past their box by more than a tenth "
            f"of it (annotation ids [2, 5]): polygons of another image size than the boxes "
            f"(resized images?), or of other objects?") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_coco_json(ann_file, tmp_path / "images")  # boxes alone: the polygons not read
    assert "reaching past their box" not in caplog.text


def test_images_found_one_folder_up_or_without_their_folders_are_pointed_to(
        tmp_path: Path) -> None:
    """Label Studio's "images/x.png" under an image folder that is itself .../images, and
    CVAT's "job1/x.png" in a flat folder, were refused with the paths alone."""
    _write_png(tmp_path / "export/images/x.png", _pattern(20, 30))
    ann_file = tmp_path / "ann.json"
    anns = [_ann(1, 1, [2, 2, 5, 5])]
    for file_name, img_dir, hint in (
            ("images/x.png", tmp_path / "export/images",
             f"{tmp_path / 'export/images/x.png'} is there: is the image folder "
             f"{tmp_path / 'export'}? (the file names start with 'images/')"),
            ("job1/x.png", tmp_path / "export/images",
             f"{tmp_path / 'export/images/x.png'} is there: the images lie in the image folder "
             f"without the file names' folders ('job1/'): rewrite the names, or put the images "
             f"in those folders")):
        ann_file.write_text(json.dumps(_coco(
            [{"id": 1, "file_name": file_name, "height": 20, "width": 30}], anns)))
        with pytest.raises(DatasetError) as refused:
            load_coco_json(ann_file, img_dir)
        assert str(refused.value) == (
            f"{ann_file}: 1 problem(s):\n  image file not found for images[0] (id=1): "
            f"{img_dir / file_name}\n{hint}")
    # where another image is found, the folder is right: no hint (a file of the name one
    # folder up is another image)
    _write_png(tmp_path / "export/images/found.png", _pattern(20, 30))
    _write_png(tmp_path / "export/y.png", _pattern(20, 30))
    ann_file.write_text(json.dumps(_coco(
        [{"id": 1, "file_name": "found.png", "height": 20, "width": 30},
         {"id": 2, "file_name": "y.png", "height": 20, "width": 30}], anns)))
    with pytest.raises(DatasetError) as refused:
        load_coco_json(ann_file, tmp_path / "export/images")
    assert str(refused.value).endswith(f"(id=2): {tmp_path / 'export/images/y.png'}")
