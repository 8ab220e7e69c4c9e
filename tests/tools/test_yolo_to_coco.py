"""tools/yolo_to_coco.py: Ultralytics YOLO labels to COCO files (boxes and polygons in pixels of
the image as read, after its EXIF orientation; class k as category k + 1), every problem named
with nothing written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_detect.engine.data import DatasetError, load_coco_json, read_image
from tests.tools.test_train_eval_demo import load_tool

yolo_to_coco = load_tool("yolo_to_coco")


def _image(path: Path, width: int, height: int, orientation: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.new("RGB", (width, height), (90, 120, 150)).save(path, exif=exif)


def _labels(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    _image(root / "images/train/a.jpg", 100, 50)
    _labels(root / "labels/train/a.txt", [
        "0 0.5 0.5 0.2 0.4",                          # a box
        "1 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6"])         # a polygon: a 20 x 20 square
    _image(root / "images/train/sub/b.png", 40, 40)   # no label file: no objects
    # stored 100 x 50, turned a quarter by its EXIF orientation: read as 50 x 100
    _image(root / "images/val/c.jpg", 100, 50, orientation=6)
    _labels(root / "labels/val/c.txt", ["1 0.5 0.25 0.2 0.1"])
    (root / "val.txt").write_text("./images/val/c.jpg\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: val.txt\n"
                                    "names:\n  0: cat\n  1: dog\n")
    return root


def test_boxes_and_polygons_in_pixels_of_the_image_as_read(dataset: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "coco"
    coco = yolo_to_coco.main([str(dataset / "data.yaml"), "--output-dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["train.json", "val.json"]
    train, val = coco["train"], coco["val"]
    assert train["categories"] == val["categories"] == [
        {"id": 1, "name": "cat", "supercategory": "none"},
        {"id": 2, "name": "dog", "supercategory": "none"}]
    assert [(i["file_name"], i["height"], i["width"]) for i in train["images"]] == [
        ("images/train/a.jpg", 50, 100), ("images/train/sub/b.png", 40, 40)]
    box, square = train["annotations"]
    # centre (50, 25), 20 x 20 pixels of the 100 x 50 image
    assert (box["category_id"], box["bbox"], box["area"]) == (1, [40.0, 15.0, 20.0, 20.0], 400.0)
    assert "segmentation" not in box
    np.testing.assert_allclose(square["segmentation"], [[10, 10, 30, 10, 30, 30, 10, 30]])
    np.testing.assert_allclose(square["bbox"], [10, 10, 20, 20])
    assert square["category_id"] == 2 and square["area"] == 400.0

    # the val image reads as 50 wide, 100 high: the fractions are of that
    assert read_image(dataset / "images/val/c.jpg").shape == (100, 50, 3)
    assert [(i["file_name"], i["height"], i["width"]) for i in val["images"]] == [
        ("images/val/c.jpg", 100, 50)]
    np.testing.assert_allclose(val["annotations"][0]["bbox"], [20, 20, 10, 10])

    records, mapping, _ = load_coco_json(out / "train.json", dataset)
    assert mapping.names == ("cat", "dog")
    np.testing.assert_allclose(records[0]["boxes"], [[40, 15, 60, 35], [10, 10, 30, 30]])
    assert records[0]["classes"].tolist() == [0, 1] and len(records[1]["boxes"]) == 0
    # Mask R-CNN needs a polygon for every object: the box's line is named
    with pytest.raises(DatasetError, match="annotation id=1 .*no 'segmentation'"):
        load_coco_json(out / "train.json", dataset, keep_segmentation=True)


def test_a_roboflow_export_names_its_folders_from_one_level_up(tmp_path: Path,
                                                               capsys) -> None:
    """... and its data.yaml names a test split it did not export: left out, said."""
    root = tmp_path / "export"
    for split in ("train", "valid"):
        _image(root / f"{split}/images/x.jpg", 64, 64)
        _labels(root / f"{split}/labels/x.txt", ["0 0.5 0.5 0.5 0.5"])
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\n"
                                    "test: ../test/images\nnc: 1\nnames: ['bolt']\n")
    out = tmp_path / "o"
    coco = yolo_to_coco.main([str(root / "data.yaml"), "--output-dir", str(out)])
    assert set(coco) == {"train", "val"}
    assert coco["train"]["images"][0]["file_name"] == "train/images/x.jpg"
    assert coco["train"]["annotations"][0]["bbox"] == [16.0, 16.0, 32.0, 32.0]
    printed = capsys.readouterr().out
    assert "data.yaml: its test split is not there: left out" in printed
    assert (f"use: data.train.ann_file={out / 'train.json'} data.train.img_dir={root} "
            f"data.val.ann_file={out / 'val.json'} data.val.img_dir={root}") in printed
    with pytest.raises(DatasetError, match="test: .*test/images does not exist"):
        yolo_to_coco.main([str(root / "data.yaml"), "--output-dir", str(out), "--splits",
                           "test"])


def test_every_problem_is_named_and_nothing_is_written(dataset: Path, tmp_path: Path) -> None:
    _labels(dataset / "labels/train/a.txt", [
        "2 0.5 0.5 0.2 0.4", "0 0.5 0.5 0.2", "0 0.5 1.5 0.2 0.4", "0 x 0.5 0.2 0.4",
        "0.5 0.5 0.5 0.2 0.4"])
    (dataset / "images/train/sub/b.png").write_bytes(b"not a png")
    out = tmp_path / "coco"
    with pytest.raises(DatasetError) as refused:
        yolo_to_coco.main([str(dataset / "data.yaml"), "--output-dir", str(out)])
    message = str(refused.value)
    assert message.startswith("2 problems in the YOLO labels")  # the first bad line of a file
    assert "a.txt line 1: class 2 is not one of 0..1" in message
    assert "b.png: missing or not an image" in message
    assert not out.exists()

    for line, expected in [("0 0.5 0.5 0.2", "3 numbers after the class: 4 \\(a box\\)"),
                           ("0 0.5 1.5 0.2 0.4", "coordinates must be fractions of the image"),
                           ("0 x 0.5 0.2 0.4", "not numbers"),
                           ("0.5 0.5 0.5 0.2 0.4", "class 0.5 is not one of 0..1"),
                           ("0 0.5 0.5 0 0.4", "an object of no width or height \\(0x"),
                           ("1 0.1 0.5 0.2 0.5 0.3 0.5", "an object of no width or height "
                                                         "\\([0-9.]+x0 px\\)")]:
        _labels(dataset / "labels/train/a.txt", [line])
        with pytest.raises(DatasetError, match="a.txt line 1: " + expected):
            yolo_to_coco.main([str(dataset / "data.yaml"), "--output-dir", str(out),
                               "--splits", "train"])
    with pytest.raises(DatasetError, match="no split 'test'"):
        yolo_to_coco.main([str(dataset / "data.yaml"), "--output-dir", str(out),
                           "--splits", "test"])
    (dataset / "data.yaml").write_text("train: images/train\nnames: {0: cat, x: dog}\n")
    with pytest.raises(DatasetError, match=r"data.yaml: 'names' must number the classes 0..K-1, "
                                           r"got \[0, 'x'\]"):  # was sorted()'s TypeError
        yolo_to_coco.main([str(dataset / "data.yaml"), "--output-dir", str(out)])
    (dataset / "data.yaml").write_text("train: images/train\nnames: [cat, dog, cat, cat]\n")
    with pytest.raises(DatasetError, match=r"data.yaml: classes of the same name: 'cat' "
                                           r"\(classes 0, 2, 3\)"):  # were two categories 'cat'
        yolo_to_coco.main([str(dataset / "data.yaml"), "--output-dir", str(out)])
    (dataset / "data.yaml").write_text("train: images/train\n")
    with pytest.raises(DatasetError, match="data.yaml: no 'names'"):
        yolo_to_coco.main([str(dataset / "data.yaml"), "--output-dir", str(out)])
    assert not out.exists()


def test_exports_as_they_are_written(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Label Studio's folder (classes.txt, no YAML), coordinates a little outside 0..1 (as its
    and make-sense's exports write them), repeated lines, an image listed twice, a pose
    dataset's lines, a split file's ./ paths beside it."""
    export = tmp_path / "label_studio"
    _image(export / "images/x.png", 100, 100)
    # the same object twice, written apart (0.50 for 0.5, a tab, a trailing space)
    _labels(export / "labels/x.txt", ["0 0.5 0.5 1.004 0.2", "0 0.50\t0.5 1.0040 .2 ", "",
                                      "1 -0.004 0.1 0.2 0.2"])
    (export / "classes.txt").write_bytes("\ufeffbolt\nnut\n".encode())
    coco = yolo_to_coco.main([str(export), "--output-dir", str(tmp_path / "o1")])["train"]
    assert [c["name"] for c in coco["categories"]] == ["bolt", "nut"]
    # clipped to the image at the corners (the centre -0.004 clipped to 0 made the box 10 px
    # wide, its right edge moved by 0.4 px); the repeated object once
    assert [(a["category_id"], a["bbox"]) for a in coco["annotations"]] == [
        (1, [0.0, 40.0, 100.0, 20.0]), (2, [0.0, 0.0, pytest.approx(9.6), 20.0])]
    assert "(0 with polygons; 1 repeated label lines left out)" in capsys.readouterr().out
    (export / "classes.txt").write_text("bolt\nbolt\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"classes.txt: classes of the same name: 'bolt' "
                                           r"\(classes 0, 1\)"):
        yolo_to_coco.main([str(export), "--output-dir", str(tmp_path / "o1")])
    (export / "classes.txt").write_text("bolt\nnut\n", encoding="utf-8")
    _labels(export / "labels/x.txt", ["0 0.5 0.5 1.02 0.2"])
    with pytest.raises(DatasetError, match="x.txt line 1: coordinates must be fractions"):
        yolo_to_coco.main([str(export), "--output-dir", str(tmp_path / "o1")])

    pose = tmp_path / "pose"
    _image(pose / "images/val/p.jpg", 100, 50)
    # box (50, 25) 20 x 20, then two keypoints (x, y, visibility)
    _labels(pose / "labels/val/p.txt", ["0 0.5 0.5 0.2 0.4 0.45 0.45 2 0.55 0.55 2"])
    (pose / "lists").mkdir()
    (pose / "lists/val.txt").write_text("./../images/val/p.jpg\n../images/val/p.jpg\n",
                                        encoding="utf-8")
    (pose / "data.yaml").write_text("val: lists/val.txt\nkpt_shape: [2, 3]\nnames: [person]\n",
                                    encoding="utf-8")
    val = yolo_to_coco.main([str(pose), "--output-dir", str(tmp_path / "o2")])["val"]
    assert len(val["images"]) == 1  # listed twice, converted once
    assert [a["bbox"] for a in val["annotations"]] == [[40.0, 15.0, 20.0, 20.0]]
    # a keypoint short (3 numbers for kpt_shape's 2 x 3): was converted without a word
    _labels(pose / "labels/val/p.txt", ["0 0.5 0.5 0.2 0.4 0.45 0.45 2"])
    with pytest.raises(DatasetError, match=r"p.txt line 1: 7 numbers after the class: 4 \(the "
                                           r"box\) \+ 6 \(the keypoints of kpt_shape\)"):
        yolo_to_coco.main([str(pose), "--output-dir", str(tmp_path / "o3")])
    for shape, said in (("[2, 4]", r"\[2, 4\]"), ("[.inf, 3]", r"\[inf, 3\]")):
        (pose / "data.yaml").write_text(f"val: lists/val.txt\nkpt_shape: {shape}\n"
                                        f"names: [person]\n", encoding="utf-8")
        with pytest.raises(DatasetError, match=r"data.yaml: kpt_shape must be \[keypoints, 2 "
                                               rf"or 3\], got {said}"):
            yolo_to_coco.main([str(pose), "--output-dir", str(tmp_path / "o3")])
    (pose / "data.yaml").write_text("val: lists/val.txt\nkpt_shape: [1, 3.0]\nnames: [person]\n",
                                    encoding="utf-8")  # (Ultralytics reads 3.0 as 3)
    _labels(pose / "labels/val/p.txt", ["0 0.5 0.5 0.2 0.4 0.45 0.45 2"])
    val = yolo_to_coco.main([str(pose), "--output-dir", str(tmp_path / "o4")])["val"]
    assert [a["bbox"] for a in val["annotations"]] == [[40.0, 15.0, 20.0, 20.0]]


def test_a_split_without_any_label_file_and_a_class_that_is_no_number(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _image(root / "images/a.jpg", 10, 10)
    _labels(root / "Labels/a.txt", ["0 0.5 0.5 0.2 0.2"])  # not Ultralytics' folder name
    (root / "data.yaml").write_text("train: images\nnames: [a]\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="none of the 1 images has a label file: .*a.jpg's "
                                           "would be .*labels/a.txt"):
        yolo_to_coco.main([str(root / "data.yaml"), "--output-dir", str(tmp_path / "o")])
    _labels(root / "labels/a.txt", ["nan 0.5 0.5 0.2 0.2"])
    with pytest.raises(DatasetError, match="a.txt line 1: class nan is not one of 0..0"):
        yolo_to_coco.main([str(root / "data.yaml"), "--output-dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_a_yaml_none_of_whose_splits_is_there_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("train: nope/images\nval: nope2/images\nnames: [a]\n",
                                        encoding="utf-8")
    with pytest.raises(DatasetError, match=r"data.yaml: none of its splits is there \(train, "
                                           r"val\): its paths are taken from its 'path'"):
        yolo_to_coco.main([str(tmp_path / "data.yaml"), "--output-dir", str(tmp_path / "o")])


def test_an_empty_split_is_left_out_by_default_and_named_when_asked_for(
        dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty test folder (a Roboflow export's) stopped the conversion of the other splits
    by default; it is left out, as a split whose folder is not there, and refused, named, when
    --splits asks for it."""
    (dataset / "images/test").mkdir()
    (dataset / "data.yaml").write_text("train: images/train\ntest: images/test\n"
                                       "names: [cat, dog]\n", encoding="utf-8")
    coco = yolo_to_coco.main([str(dataset / "data.yaml"), "--output-dir", str(tmp_path / "o")])
    assert list(coco) == ["train"] and len(coco["train"]["images"]) == 2
    assert ("data.yaml: its test split (images/test) has no images: left out"
            in capsys.readouterr().out)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["train.json"]
    with pytest.raises(DatasetError, match=r"data.yaml: its test split has no images \(.*"
                                           r"images/test; --splits names the splits"):
        yolo_to_coco.main([str(dataset / "data.yaml"), "--output-dir", str(tmp_path / "o2"),
                           "--splits", "train", "test"])
    assert not (tmp_path / "o2").exists()
    # an empty train folder: more likely a wrong path than an export's habit
    (dataset / "data.yaml").write_text("train: images/test\nval: images/test\n"
                                       "names: [cat, dog]\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"data.yaml: its train split has no images \("):
        yolo_to_coco.main([str(dataset / "data.yaml"), "--output-dir", str(tmp_path / "o3")])
    assert not (tmp_path / "o3").exists()


def test_names_numbered_past_nine_keep_their_order(tmp_path: Path) -> None:
    """COCO's own data.yaml numbers 80 names: 10 sorted as text came before 2, and every
    mapping of more than ten classes was refused as not numbering 0..K-1."""
    _image(tmp_path / "images/a.jpg", 40, 30)
    _labels(tmp_path / "labels/a.txt", ["11 0.5 0.5 0.5 0.5"])
    numbered = "".join(f"  {k}: class{k}\n" for k in (11, 2, 10, 0, 1, 3, 4, 5, 6, 7, 8, 9))
    (tmp_path / "data.yaml").write_text(f"train: images\nnames:\n{numbered}", encoding="utf-8")
    coco = yolo_to_coco.main([str(tmp_path / "data.yaml"), "--output-dir",
                              str(tmp_path / "out")])["train"]
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [
        (k + 1, f"class{k}") for k in range(12)]
    assert [a["category_id"] for a in coco["annotations"]] == [12]


def test_names_and_nc_that_disagree_are_refused(tmp_path: Path) -> None:
    """nc: 3 with two names was taken as two classes without a word (Ultralytics refuses it:
    a name left out of the list shifts every later class)."""
    _image(tmp_path / "images/a.jpg", 40, 30)
    _labels(tmp_path / "labels/a.txt", ["1 0.5 0.5 0.5 0.5"])
    (tmp_path / "data.yaml").write_text("train: images\nnc: 3\nnames: [a, b]\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"data.yaml: 'names' has 2 classes but 'nc' is 3; "
                                           r"they must agree"):
        yolo_to_coco.main([str(tmp_path / "data.yaml"), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    (tmp_path / "data.yaml").write_text("train: images\nnc: 2\nnames: [a, b]\n", encoding="utf-8")
    coco = yolo_to_coco.main([str(tmp_path / "data.yaml"), "--output-dir",
                              str(tmp_path / "out")])["train"]
    assert [a["category_id"] for a in coco["annotations"]] == [2]


def test_a_yaml_with_nc_and_no_names_names_the_classes_as_ultralytics_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`nc: 3` without `names` was refused; Ultralytics names the classes class_0..class_2."""
    _image(tmp_path / "images/a.jpg", 40, 30)
    _labels(tmp_path / "labels/a.txt", ["2 0.5 0.5 0.5 0.5"])
    (tmp_path / "data.yaml").write_text("train: images\nnc: 3\n", encoding="utf-8")
    coco = yolo_to_coco.main([str(tmp_path / "data.yaml"), "--output-dir",
                              str(tmp_path / "out")])["train"]
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [
        (1, "class_0"), (2, "class_1"), (3, "class_2")]
    assert [a["category_id"] for a in coco["annotations"]] == [3]
    assert "data.yaml: no 'names': classes named class_0..class_2" in capsys.readouterr().out
    for nc in ("0", "two", "true", "2.5"):
        (tmp_path / "data.yaml").write_text(f"train: images\nnc: {nc}\n", encoding="utf-8")
        with pytest.raises(DatasetError, match=r"data.yaml: 'nc' must be the number of "
                                               r"classes, got "):
            yolo_to_coco.main([str(tmp_path / "data.yaml"), "--output-dir",
                               str(tmp_path / f"out{nc}")])


def test_images_without_labels_and_labels_of_no_image_are_counted_and_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """B.JPG's label file written b.txt (its case changed), a label file left by an image
    renamed or deleted: their objects were left out, their images trained as images without
    objects, and nothing said (Ultralytics counts the backgrounds). A polygon of points on a
    line (no area) was kept: an empty mask for Mask R-CNN to learn; the labelme converter
    leaves such shapes out. Quoted class numbers ({"0": cat}) were refused; Ultralytics reads
    them."""
    for name in ("a.jpg", "B.JPG", "c.jpg"):
        _image(tmp_path / "images/train" / name, 200, 100)
    for stem in ("a", "b", "ghost"):
        _labels(tmp_path / f"labels/train/{stem}.txt", ["0 0.5 0.5 0.2 0.4"])
    _labels(tmp_path / "labels/train/c.TXT", ["0 0.5 0.5 0.2 0.4"])  # (was not even named)
    _labels(tmp_path / "labels/train/a.txt", ["0 0.5 0.5 0.2 0.4",
                                              "0 0.1 0.1 0.5 0.5 0.9 0.9"])  # on a line
    (tmp_path / "data.yaml").write_text('path: .\ntrain: images/train\nnames: {"0": cat}\n')
    coco = yolo_to_coco.main([str(tmp_path / "data.yaml"), "--output-dir",
                              str(tmp_path / "out")])["train"]
    assert [coco["images"][a["image_id"] - 1]["file_name"] for a in coco["annotations"]] == [
        "images/train/a.jpg"]
    assert coco["categories"] == [{"id": 1, "name": "cat", "supercategory": "none"}]
    out = capsys.readouterr().out
    assert (f"{tmp_path / 'out/train.json'}: 3 images (2 without a label file: no objects, as "
            f"Ultralytics counts them), 1 objects (0 with polygons; 1 polygons of no area "
            f"left out)") in out
    labels = tmp_path / "labels/train"
    assert (f"{tmp_path / 'data.yaml'}: 3 label files are no image's, left out: "
            f"{labels / 'b.txt'} (the label file of {tmp_path / 'images/train/B.JPG'} is B.txt: "
            f"the case differs); {labels / 'c.TXT'} (the label file of "
            f"{tmp_path / 'images/train/c.jpg'} is c.txt: the case differs); "
            f"{labels / 'ghost.txt'}\n") in out


def test_splits_listing_one_folder_in_two_spellings_have_no_labels_left_over(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.txt with ./images/0.jpg, val.txt with the absolute path of images/1.jpg, the
    YAML named by a relative path: their shared labels/ folder's files were all reported as
    no image's."""
    monkeypatch.chdir(tmp_path)
    for k in range(2):
        _image(tmp_path / f"images/{k}.jpg", 40, 30)
        _labels(tmp_path / f"labels/{k}.txt", ["0 0.5 0.5 0.5 0.5"])
    (tmp_path / "train.txt").write_text("./images/0.jpg\n")
    (tmp_path / "val.txt").write_text(f"{tmp_path / 'images/1.jpg'}\n")
    (tmp_path / "data.yaml").write_text("train: train.txt\nval: val.txt\nnames: [cat]\n")
    coco = yolo_to_coco.main(["data.yaml", "--output-dir", "o"])
    assert [len(coco[split]["annotations"]) for split in ("train", "val")] == [1, 1]
    assert "no image's" not in capsys.readouterr().out
