"""tools/labelme_to_coco.py: LabelMe shapes to COCO objects with masks (polygons, rectangles,
circles, bitmaps; groups as one object; __ignore__ as crowd regions), boxes worked out by hand,
every problem named with nothing written."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_detect.engine.data import DatasetError, load_coco_json, segmentation_to_mask
from tests.tools.test_train_eval_demo import load_tool

labelme_to_coco = load_tool("labelme_to_coco")


def _shape(label: str, points: list, kind: str = "polygon", group: int | None = None,
           **extra: object) -> dict:
    return {"label": label, "points": points, "group_id": group, "shape_type": kind,
            "flags": {}, **extra}


def _labelme(path: Path, image: str, height: int, width: int, shapes: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "5.5.0", "flags": {}, "shapes": shapes,
                                "imagePath": image, "imageData": None,
                                "imageHeight": height, "imageWidth": width}), encoding="utf-8")


def _png_b64(bitmap: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(bitmap.astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture()
def labelled(tmp_path: Path) -> Path:
    root = tmp_path / "labelled"
    root.mkdir()
    Image.new("RGB", (100, 80)).save(root / "a.jpg")
    _labelme(root / "a.json", "a.jpg", 80, 100, [
        _shape("cat", [[10, 10], [30, 10], [30, 30], [10, 30]]),
        _shape("dog", [[60, 50], [40, 40]], "rectangle"),           # corners in any order
        _shape("cat", [[50, 5], [55, 5], [55, 9]], group=1),        # one cat of two parts
        _shape("cat", [[60, 10], [66, 10], [66, 14]], group=1),
        _shape("ball", [[80, 20], [80, 30]], "circle"),             # centre, a point on it
        _shape("nose", [[5, 5]], "point"),
        _shape("tail", [[1, 1], [9, 9]], "line"),
        _shape("__ignore__", [[0, 60], [20, 80]], "rectangle"),
    ])
    bitmap = np.zeros((4, 5), np.uint8)
    bitmap[1:3, 1:4] = 1                                            # 6 pixels
    (root / "sub").mkdir()
    Image.new("RGB", (20, 10)).save(root / "sub" / "b.png")
    _labelme(root / "sub" / "b.json", "b.png", 10, 20, [
        _shape("dog", [[2, 3], [6, 6]], "mask", mask=_png_b64(bitmap))])
    return root


def test_shapes_become_objects_with_masks(labelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    coco = labelme_to_coco.main([str(labelled), "--output", str(out)])
    assert json.loads(out.read_text()) == coco
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [
        (1, "ball"), (2, "cat"), (3, "dog")]
    assert [i["file_name"] for i in coco["images"]] == ["a.jpg", "sub/b.png"]
    objects = [a for a in coco["annotations"] if not a["iscrowd"]]
    assert [(a["image_id"], a["category_id"]) for a in objects] == [
        (1, 2), (1, 3), (1, 2), (1, 1), (2, 3)]
    cat, dog, two_part_cat, ball, bitmap_dog = objects
    assert cat["bbox"] == [10.0, 10.0, 20.0, 20.0] and cat["area"] == 400.0
    assert dog["segmentation"] == [[40.0, 40.0, 60.0, 40.0, 60.0, 50.0, 40.0, 50.0]]
    assert dog["bbox"] == [40.0, 40.0, 20.0, 10.0]
    assert len(two_part_cat["segmentation"]) == 2 and two_part_cat["bbox"] == [50, 5, 16, 9]
    np.testing.assert_allclose(ball["bbox"], [70, 10, 20, 20], atol=1e-9)  # radius 10
    assert ball["area"] == pytest.approx(np.pi * 100, rel=0.03)
    # the bitmap's 6 pixels at (3, 4) + (1..3, 1..2) of the box from (2, 3)
    mask = segmentation_to_mask(bitmap_dog["segmentation"], 10, 20)
    assert mask.sum() == 6 and mask[4:6, 3:6].all()
    assert bitmap_dog["bbox"] == [3.0, 4.0, 3.0, 2.0] and bitmap_dog["area"] == 6.0
    # __ignore__: a crowd region of each category
    crowd = [a for a in coco["annotations"] if a["iscrowd"]]
    assert sorted(a["category_id"] for a in crowd) == [1, 2, 3]
    assert {tuple(a["bbox"]) for a in crowd} == {(0.0, 60.0, 20.0, 20.0)}

    records, mapping, stats = load_coco_json(out, labelled, keep_segmentation=True)
    assert mapping.names == ("ball", "cat", "dog") and stats.crowd == 3
    assert len(records[0]["segmentations"]) == 4 and len(records[1]["segmentations"]) == 1

    val = labelme_to_coco.main([str(labelled / "sub"), "--output", str(tmp_path / "val.json"),
                                "--classes-from", str(out)])
    assert val["categories"] == coco["categories"] and val["annotations"][0]["category_id"] == 3


def test_json_files_apart_from_their_images(tmp_path: Path) -> None:
    Image.new("RGB", (30, 20)).save((tmp_path / "photos").mkdir() or tmp_path / "photos/p.jpg")
    _labelme(tmp_path / "annotations/p.json", "..\\photos_old\\p.jpg", 20, 30,
             [_shape("bolt", [[1, 1], [5, 1], [5, 5]])])
    with pytest.raises(DatasetError, match="its image '../photos_old/p.jpg' is not in"):
        labelme_to_coco.main([str(tmp_path / "annotations"), "--output", str(tmp_path / "o")])
    coco = labelme_to_coco.main([str(tmp_path / "annotations"), "--images",
                                 str(tmp_path / "photos"), "--output", str(tmp_path / "o")])
    assert coco["images"][0]["file_name"] == "p.jpg"


def test_images_in_the_sub_folders_the_json_files_have(tmp_path: Path) -> None:
    """--images photos/ for annotations/a/p.json is photos/a/p.jpg (of two p.jpg), as
    voc_to_coco looks; an image at the top of photos/ is found too."""
    for sub, size in [("a", (30, 20)), ("b", (40, 10))]:
        Image.new("RGB", size).save((tmp_path / "photos" / sub).mkdir(parents=True)
                                    or tmp_path / "photos" / sub / "p.jpg")
        _labelme(tmp_path / "annotations" / sub / "p.json", "p.jpg", size[1], size[0],
                 [_shape("bolt", [[1, 1], [5, 1], [5, 5]])])
    Image.new("RGB", (8, 6)).save(tmp_path / "photos" / "top.png")
    _labelme(tmp_path / "annotations" / "c" / "top.json", "top.png", 6, 8,
             [_shape("bolt", [[1, 1], [5, 1], [5, 5]])])
    coco = labelme_to_coco.main([str(tmp_path / "annotations"), "--images",
                                 str(tmp_path / "photos"), "--output", str(tmp_path / "o")])
    assert sorted((i["file_name"], i["width"], i["height"]) for i in coco["images"]) == [
        ("a/p.jpg", 30, 20), ("b/p.jpg", 40, 10), ("top.png", 8, 6)]


def test_every_problem_is_named_and_nothing_is_written(labelled: Path, tmp_path: Path) -> None:
    _labelme(labelled / "a.json", "a.jpg", 80, 100, [
        _shape("cat", [[10, 10], [30, 10]]), _shape("", [[1, 1], [2, 2], [3, 1]])])
    (labelled / "sub" / "b.json").write_text("{not json", encoding="utf-8")
    _labelme(labelled / "c.json", "c.jpg", 10, 10, [])
    _labelme(labelled / "d.json", "a.jpg", 60, 100, [])
    out = tmp_path / "out.json"
    with pytest.raises(DatasetError) as refused:
        labelme_to_coco.main([str(labelled), "--output", str(out)])
    message = str(refused.value)
    assert message.startswith("4 problems in the labelme files")
    assert "a.json shape 0 (cat): a polygon of 2 points" in message
    assert "b.json: not a readable JSON file" in message
    assert "c.json: its image 'c.jpg' is not in" in message
    assert "d.json: imageHeight x imageWidth 60x100, its image" in message
    assert not out.exists()

    for name in ("b", "c", "d"):
        (labelled / ("sub" if name == "b" else "") / f"{name}.json").unlink()
    _labelme(labelled / "a.json", "a.jpg", 80, 100, [_shape("cat", [[1, 1], [5, 1], [5, 5]])])
    _labelme(labelled / "a2.json", "a.jpg", 80, 100, [])
    with pytest.raises(DatasetError, match="a2.json: its image .*a.jpg is also .*a.json's"):
        labelme_to_coco.main([str(labelled), "--output", str(out)])
    (labelled / "a2.json").unlink()
    with pytest.raises(DatasetError, match=r"names not among the classes: 'cat' \(1 objects, "
                                           r"first in .*/labelled/a.json\)"):
        labelme_to_coco.main([str(labelled), "--output", str(out), "--classes", "dog"])
    listed = _shape("cat", [[1, 1], [5, 1], [5, 5]])
    listed["group_id"] = [1]  # was a TypeError (unhashable) traceback
    _labelme(labelled / "a.json", "a.jpg", 80, 100, [listed])
    with pytest.raises(DatasetError, match=r"a.json shape 0 \(cat\): group_id must be a whole "
                                           r"number or a string, got \[1\]"):
        labelme_to_coco.main([str(labelled), "--output", str(out)])
    assert not out.exists()
    # 1.0 (a script's JSON) is group 1: it was refused as no number
    parts = [_shape("cat", [[1, 1], [5, 1], [5, 5]]), _shape("cat", [[20, 20], [30, 20], [30, 30]])]
    for part, group in zip(parts, (1, 1.0)):
        part["group_id"] = group
    _labelme(labelled / "a.json", "a.jpg", 80, 100, parts)
    coco = labelme_to_coco.main([str(labelled), "--output", str(out)])
    assert len(coco["annotations"]) == 1 and coco["annotations"][0]["bbox"] == [1, 1, 29, 29]


def test_x_anylabeling_shapes_embedded_images_and_files_of_other_kinds(tmp_path: Path) -> None:
    root = tmp_path / "xany"
    root.mkdir()
    elsewhere = tmp_path / "annotator_disk"
    elsewhere.mkdir()
    Image.new("RGB", (50, 40)).save(elsewhere / "e.jpg")   # on the annotator's disk too
    Image.new("RGB", (50, 40)).save(root / "e.jpg")
    rgb_mask = np.zeros((3, 3, 3), np.uint8)
    rgb_mask[1, 1] = 255                                    # one pixel, written as RGB
    _labelme(root / "e.json", str(elsewhere / "e.jpg"), 40, 50, [
        _shape("box", [[10, 10], [40, 10], [40, 30], [10, 30]], "rectangle"),  # 4 corners
        _shape("box", [[20, 0], [30, 10], [20, 20], [10, 10]], "rotation", difficult=True),
        _shape("box", [[1, 1], [2, 2], [3, 3]]),            # collinear: no area
        _shape("box", [[0, 0], [2, 2]], "mask", mask=_png_b64(rgb_mask)),
    ])
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(buffer, format="PNG")
    embedded = {"version": "5.5.0", "shapes": [_shape("box", [[1, 1], [6, 1], [6, 5]])],
                "imagePath": "lost/emb.png", "imageData": base64.b64encode(buffer.getvalue())
                .decode(), "imageHeight": 6, "imageWidth": 8}
    (root / "emb.json").write_text(json.dumps(embedded), encoding="utf-8")
    out = root / "train.json"
    with pytest.raises(DatasetError, match="emb.json: its image 'lost/emb.png' is not in .*the "
                                           "file embeds it \\(imageData\\): --write-embedded"):
        labelme_to_coco.main([str(root), "--output", str(out)])
    coco = labelme_to_coco.main([str(root), "--output", str(out), "--write-embedded"])
    assert (root / "emb.png").is_file()
    assert [i["file_name"] for i in coco["images"]] == ["e.jpg", "emb.png"]  # the copy beside
    by_image = [[(a["bbox"], a["iscrowd"]) for a in coco["annotations"] if a["image_id"] == i]
                for i in (1, 2)]
    assert by_image[0] == [([10.0, 10.0, 30.0, 20.0], 0), ([10.0, 0.0, 20.0, 20.0], 1),
                           ([1.0, 1.0, 1.0, 1.0], 0)]  # the collinear one left out
    # run again with train.json inside ROOT: the output and other COCO files are not read
    (root / "old_coco.json").write_text(json.dumps(coco), encoding="utf-8")
    again = labelme_to_coco.main([str(root), "--output", str(out)])
    assert again["annotations"] == coco["annotations"]

    _labelme(root / "e.json", "e.jpg", 40, 50, [_shape("box", [[1, 1], [5, 5]], "cuboid")])
    with pytest.raises(DatasetError, match="e.json shape 0 \\(box\\): shape_type 'cuboid' is "
                                           "none of polygon, rectangle"):
        labelme_to_coco.main([str(root), "--output", str(out)])


def test_embedded_images_go_to_the_images_folder_and_a_failed_run_leaves_none(
        tmp_path: Path) -> None:
    """With --images, an embedded image was written beside its JSON file, outside the folder
    the file names count from: always refused, and the written image stayed (as one did when
    another file's problem stopped the run)."""
    annotations, photos = tmp_path / "json", tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 6)).save(photos / "a.png")
    _labelme(annotations / "a.json", "a.png", 6, 8, [_shape("box", [[1, 1], [6, 1], [6, 5]])])
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(buffer, format="PNG")
    (annotations / "b.json").write_text(json.dumps({
        "shapes": [_shape("box", [[1, 1], [6, 1], [6, 5]])], "imagePath": "b.png",
        "imageData": base64.b64encode(buffer.getvalue()).decode()}), encoding="utf-8")
    _labelme(annotations / "c.json", "c.png", 6, 8, [])  # its image nowhere
    args = [str(annotations), "--images", str(photos), "--output", str(tmp_path / "out.json"),
            "--write-embedded"]
    with pytest.raises(DatasetError, match="c.json: its image 'c.png' is not in "):
        labelme_to_coco.main(args)
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == ["a.png"]  # nothing written
    (annotations / "c.json").unlink()
    coco = labelme_to_coco.main(args)
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "b.png"]
    assert (photos / "b.png").read_bytes() == buffer.getvalue()
    # in sub folders: each embedded image into the sub folder its JSON file has (both at the
    # top of photos/ were taken for one image named twice); a failed run removes the folders
    # it made too
    for sub, colour in (("x", (1, 2, 3)), ("y", (4, 5, 6))):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 6), colour).save(buffer, format="PNG")
        (annotations / sub).mkdir()
        (annotations / sub / "p.json").write_text(json.dumps({
            "shapes": [_shape("box", [[1, 1], [6, 1], [6, 5]])], "imagePath": "p.png",
            "imageData": base64.b64encode(buffer.getvalue()).decode()}), encoding="utf-8")
    _labelme(annotations / "z" / "c.json", "c.png", 6, 8, [])  # its image nowhere
    with pytest.raises(DatasetError, match="c.json: its image 'c.png' is not in "):
        labelme_to_coco.main(args)
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*")) == [
        "a.png", "b.png"]
    (annotations / "z" / "c.json").unlink()
    coco = labelme_to_coco.main(args)
    assert sorted(i["file_name"] for i in coco["images"]) == [
        "a.png", "b.png", "x/p.png", "y/p.png"]
    assert Image.open(photos / "y/p.png").getpixel((0, 0)) == (4, 5, 6)


def test_labelmes_folders_side_by_side_and_files_of_no_class_are_said(tmp_path: Path) -> None:
    """labelme saving to annotations/ beside images/ writes "..\\images\\a.png": refused
    without naming the way out; a folder whose only shapes are __ignore__ was written as a
    COCO file of 0 categories, which training refuses."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "images/a.png")
    _labelme(tmp_path / "annotations/a.json", "..\\images\\a.png", 6, 8,
             [_shape("__ignore__", [[1, 1], [6, 1], [6, 5]])])
    out = tmp_path / "out.json"
    with pytest.raises(DatasetError, match=rf"a.png: not under the image folder "
                                           rf"{tmp_path / 'annotations'} \(--img-dir "
                                           rf"{tmp_path}: a folder above both\)"):
        labelme_to_coco.main([str(tmp_path / "annotations"), "--output", str(out)])
    with pytest.raises(DatasetError, match=r"no object with a class was found \(1 images, 0 "
                                           r"objects, 0 crowd regions.*\): a file of 0 "
                                           r"categories would be refused by training; "):
        labelme_to_coco.main([str(tmp_path / "annotations"), "--output", str(out),
                              "--img-dir", str(tmp_path)])
    assert not out.exists()
    coco = labelme_to_coco.main([str(tmp_path / "annotations"), "--output", str(out),
                                 "--img-dir", str(tmp_path), "--classes", "box"])
    assert [i["file_name"] for i in coco["images"]] == ["images/a.png"]
    assert [(a["category_id"], a["iscrowd"]) for a in coco["annotations"]] == [(1, 1)]


def test_an_output_that_is_a_labelme_file_is_refused(labelled: Path) -> None:
    """--output ROOT/a.json left a.json out of the inputs, then replaced its shapes with the
    COCO file of the others (its image and its categories gone), exit 0."""
    before = (labelled / "a.json").read_bytes()
    with pytest.raises(DatasetError, match="--output .*a.json is a labelme file: the COCO file "
                                           "would replace its shapes"):
        labelme_to_coco.main([str(labelled), "--output", str(labelled / "a.json")])
    assert (labelled / "a.json").read_bytes() == before


def test_a_file_without_an_image_path_takes_the_image_of_its_name(tmp_path: Path) -> None:
    """An empty or missing imagePath (a script's output) was refused as "its image '' is not
    in ..." with pic.jpg beside pic.json; the VOC converter finds an XML's image so."""
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    Image.new("RGB", (100, 80)).save(labelled / "pic.jpg")
    Image.new("RGB", (100, 80)).save(labelled / "pic2.jpg")  # (another stem: not taken)
    _labelme(labelled / "pic.json", "", 80, 100, [_shape("cat", [[1, 1], [5, 1], [5, 5]])])
    coco = labelme_to_coco.main([str(labelled), "--output", str(tmp_path / "out.json")])
    assert [i["file_name"] for i in coco["images"]] == ["pic.jpg"]
    (labelled / "pic.jpg").unlink()
    with pytest.raises(DatasetError, match=r"pic.json: no imagePath, and no pic.\* image in "):
        labelme_to_coco.main([str(labelled), "--output", str(tmp_path / "o.json")])


def test_objects_reaching_past_their_image_are_counted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A polygon dragged past the picture's edge had its box clipped without a word."""
    Image.new("RGB", (100, 80)).save(tmp_path / "a.jpg")
    _labelme(tmp_path / "a.json", "a.jpg", 80, 100, [
        _shape("cat", [[90, 70], [130, 70], [130, 100], [90, 100]]),
        _shape("cat", [[10, 10], [20, 10], [20, 20]])])
    coco = labelme_to_coco.main([str(tmp_path), "--output", str(tmp_path / "out.json")])
    assert [a["bbox"] for a in coco["annotations"]] == [[90.0, 70.0, 10.0, 10.0],
                                                        [10.0, 10.0, 10.0, 10.0]]
    assert ("note: 1 objects reach past their image: their boxes clipped to it\n"
            in capsys.readouterr().out)
