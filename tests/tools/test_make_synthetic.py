"""tools/make_synthetic.py: determinism, layout, COCO validity, mask consistency, honesty."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from resnet_detect.engine.data.synthetic_shapes import CLASS_NAMES, compose_scene

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--num-train", "5", "--num-val", "3", "--cls-train-per-class", "3",
         "--cls-val-per-class", "2"]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_synthetic",
                                                  ROOT / "tools" / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(out: Path, *args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return _tool().main(["--output", str(out), *args])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "ds"
    assert _run(out, "--seed", "3", *SMALL) == 0
    return out


def _load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_same_seed_same_bytes_other_seed_other_bytes(dataset: Path, tmp_path: Path) -> None:
    assert _run(tmp_path / "again", "--seed", "3", *SMALL) == 0
    assert _run(tmp_path / "other", "--seed", "4", *SMALL) == 0
    first, again, other = _files(dataset), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first.keys() == again.keys()
    assert all(first[k] == again[k] for k in first)
    assert first["images/train/000000.jpg"] != other["images/train/000000.jpg"]


def test_image_does_not_depend_on_how_many_are_generated(dataset: Path, tmp_path: Path) -> None:
    assert _run(tmp_path / "fewer", "--seed", "3", "--num-train", "2", "--num-val", "1",
                "--cls-train-per-class", "1", "--cls-val-per-class", "1") == 0
    for rel in ("images/train/000001.jpg", "semantic/train/000001.png", "images/val/000000.jpg",
                "classification/train/star/000000.png"):
        assert (tmp_path / "fewer" / rel).read_bytes() == (dataset / rel).read_bytes()


def test_counts_and_layout(dataset: Path) -> None:
    assert len(list((dataset / "images" / "train").glob("*.jpg"))) == 5
    assert len(list((dataset / "images" / "val").glob("*.jpg"))) == 3
    assert len(list((dataset / "semantic" / "train").glob("*.png"))) == 5
    assert len(list((dataset / "semantic" / "val").glob("*.png"))) == 3
    for split, per_class in (("train", 3), ("val", 2)):
        dirs = sorted(p.name for p in (dataset / "classification" / split).iterdir())
        assert dirs == sorted(CLASS_NAMES)
        for d in dirs:
            files = sorted((dataset / "classification" / split / d).glob("*.png"))
            assert len(files) == per_class
            image = cv2.imread(str(files[0]))
            assert image.shape[0] == image.shape[1] and 64 <= image.shape[0] <= 96
    assert json.loads((dataset / "semantic" / "classes.json").read_text()) == \
        ["background", *CLASS_NAMES]


def test_coco_json_valid_with_noncontiguous_ids_and_boxes_inside(dataset: Path) -> None:
    for split, count in (("train", 5), ("val", 3)):
        coco = _load(dataset / "coco" / f"{split}.json")
        cat_ids = sorted(coco.getCatIds())
        assert cat_ids == [1, 3, 5, 7, 9, 11]
        assert [coco.cats[i]["name"] for i in cat_ids] == list(CLASS_NAMES)
        assert len(coco.getImgIds()) == count
        assert len(coco.getAnnIds()) >= 2 * count
        for img in coco.loadImgs(coco.getImgIds()):
            decoded = cv2.imread(str(dataset / "images" / split / img["file_name"]))
            assert decoded.shape[:2] == (img["height"], img["width"])
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and w >= 1 and h >= 1
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
            assert all(len(poly) >= 6 and len(poly) % 2 == 0 for poly in ann["segmentation"])


def test_polygons_rasterize_to_the_semantic_mask_box_and_area(dataset: Path) -> None:
    coco = _load(dataset / "coco" / "train.json")
    cat_ids = sorted(coco.getCatIds())
    for img in coco.loadImgs(coco.getImgIds()):
        semantic = cv2.imread(str(dataset / "semantic" / "train" /
                                  img["file_name"].replace(".jpg", ".png")), cv2.IMREAD_UNCHANGED)
        assert semantic.dtype == np.uint8 and semantic.shape == (img["height"], img["width"])
        assert set(np.unique(semantic)) <= set(range(len(CLASS_NAMES) + 1)) | {255}
        painted = np.zeros(semantic.shape, dtype=np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            mask = mask_utils.decode(coco.annToRLE(ann)).astype(bool)
            assert not (painted[mask] > 0).any()  # visible parts do not overlap
            painted[mask] = cat_ids.index(ann["category_id"]) + 1
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(),
                                   ys.max() + 1 - ys.min()]
            assert ann["area"] == mask.sum()
        ignored = semantic == 255
        assert (painted[~ignored] == semantic[~ignored]).all()
        assert (painted[ignored] == 0).all()
        assert ignored.sum() < 0.001 * semantic.size


def test_rerun_is_a_no_op_and_other_arguments_need_overwrite(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert _run(out, "--seed", "3", *SMALL) == 0
    stamp = (out / "coco" / "train.json").stat().st_mtime_ns
    assert _run(out, "--seed", "3", *SMALL) == 0
    assert (out / "coco" / "train.json").stat().st_mtime_ns == stamp
    assert _run(out, "--seed", "5", *SMALL) == 2
    assert _files(out) == _files(dataset)
    assert _run(out, "--seed", "5", *SMALL, "--overwrite") == 0
    assert _files(out)["images/train/000000.jpg"] != _files(dataset)["images/train/000000.jpg"]


def test_scenes_are_cluttered_varied_and_occluded() -> None:
    rng = np.random.default_rng(0)
    counts, sides, occluded = [], [], 0
    for _ in range(30):
        image, objects = compose_scene(rng, 320, 320)
        assert image.shape == (320, 320, 3) and image.dtype == np.uint8
        counts.append(len(objects))
        union = np.zeros((320, 320), dtype=np.int32)
        for obj in objects:
            union += obj.visible
            ys, xs = np.nonzero(obj.visible)
            sides.append(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)
            visible = int(obj.visible.sum())
            assert 0.5 * obj.full_area <= visible <= obj.full_area  # occlusion stays partial
            occluded += visible < 0.95 * obj.full_area
        assert union.max() <= 1  # visible regions are disjoint
    assert np.mean(counts) >= 3.5 and max(counts) >= 7
    assert min(sides) <= 16 and max(sides) >= 150
    assert occluded >= 10


def test_bad_arguments_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An empty split was written (exit 0) and refused by training later; a negative seed, a
    file as --out and an unwritable folder were tracebacks or errno lines."""
    (tmp_path / "a_file").write_text("mine")
    for args, message in ((["--num-train", "0"], "--num-train must be >= 1"),
                          (["--num-val", "0"], "--num-val must be >= 1"),
                          (["--seed", "-1"], "--seed must be >= 0"),
                          (["--cls-val-per-class", "0"], "--cls-train-per-class and "
                           "--cls-val-per-class: both 0 (no classification set) or both at "
                           "least 1"),
                          (["--out", str(tmp_path / "a_file")], "is a file, not a folder")):
        with pytest.raises(SystemExit) as stopped:
            _tool().main(["--out", str(tmp_path / "ds"), *args])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "ds").exists() and (tmp_path / "a_file").read_text() == "mine"
    blocked = tmp_path / "a_file" / "ds"  # a folder inside a file cannot be made
    assert _tool().main(["--out", str(blocked), *SMALL]) == 2
    assert f"error: cannot write the dataset to --output {blocked}" in capsys.readouterr().err
