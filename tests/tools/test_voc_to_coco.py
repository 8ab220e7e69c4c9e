"""tools/voc_to_coco.py: VOC XML to COCO, boxes as detectron2 reads VOC's (1-based inclusive
pixel indices: (xmin - 1, ymin - 1, xmax, ymax)), difficult objects as crowd regions as
mmdetection's converter writes them, and every problem named with nothing written."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from resnet_detect.detection.data.voc import VOC_CLASSES, default_classes
from resnet_detect.engine.data import DatasetError, load_coco_json
from tests.tools.test_train_eval_demo import ROOT, load_tool

voc_to_coco = load_tool("voc_to_coco")


def _xml(file_name: str, width: int, height: int, objects: list[tuple]) -> str:
    parts = [f"<annotation><folder>VOC2007</folder><filename>{file_name}</filename>"
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                     f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def _devkit(root: Path, images: dict[str, tuple[int, int, list[tuple]]],
            splits: dict[str, list[str]]) -> Path:
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, (width, height, objects) in images.items():
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), np.zeros((height, width, 3),
                                                                      np.uint8))
        (root / "Annotations" / f"{name}.xml").write_text(
            _xml(f"{name}.jpg", width, height, objects), encoding="utf-8")
    for split, names in splits.items():
        (root / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture()
def voc07(tmp_path: Path) -> Path:
    return _devkit(tmp_path / "VOCdevkit" / "VOC2007", {
        "000005": (50, 40, [("dog", (1, 1, 50, 40), 0), ("person", (10, 20, 29, 29), 0),
                            ("chair", (3, 4, 7, 9), 1)]),
        "000007": (30, 60, [("car", (2, 3, 12, 33), 0)]),
        "000009": (30, 60, []),
    }, {"trainval": ["000005", "000007"], "test": ["000009"]})


def test_boxes_and_difficult_objects_are_converted_as_detectron2_and_mmdetection_read_them(
        voc07: Path, tmp_path: Path) -> None:
    out = tmp_path / "trainval.json"
    coco = voc_to_coco.main([str(voc07), "--split", "trainval", "--output", str(out)])
    assert json.loads(out.read_text()) == coco
    # four of VOC's classes: the four, sorted (not VOC's 20)
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [
        (1, "car"), (2, "chair"), (3, "dog"), (4, "person")]
    assert coco["images"] == [
        {"id": 1, "file_name": "JPEGImages/000005.jpg", "height": 40, "width": 50},
        {"id": 2, "file_name": "JPEGImages/000007.jpg", "height": 60, "width": 30}]
    # (id, image, category id, bbox, area, iscrowd), each bbox worked out by hand from the XML
    assert [(a["id"], a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"])
            for a in coco["annotations"]] == [
        (1, 1, 3, [0.0, 0.0, 50.0, 40.0], 2000.0, 0),    # dog over the whole 50x40 image
        (2, 1, 4, [9.0, 19.0, 20.0, 10.0], 200.0, 0),    # person: pixels 10..29 x 20..29
        (3, 1, 2, [2.0, 3.0, 5.0, 6.0], 30.0, 1),        # chair, difficult: a crowd region
        (4, 2, 1, [1.0, 2.0, 11.0, 31.0], 341.0, 0)]     # car

    records, mapping, stats = load_coco_json(out, voc07)
    assert mapping.names == ("car", "chair", "dog", "person") and stats.crowd == 1
    np.testing.assert_array_equal(records[0]["boxes"], [[0, 0, 50, 40], [9, 19, 29, 29]])
    assert [mapping.names[c] for c in records[0]["classes"]] == ["dog", "person"]
    assert Path(records[1]["file_name"]) == voc07 / "JPEGImages" / "000007.jpg"

    kept = voc_to_coco.main([str(voc07), "--split", "trainval", "--output", str(out),
                             "--keep-difficult"])
    assert [a["iscrowd"] for a in kept["annotations"]] == [0, 0, 0, 0]
    # trained on, still VOC's difficult for data.val.voc_metric
    assert [a.get("difficult") for a in kept["annotations"]] == [None, None, 1, None]
    # pixel edges as written (CVAT's export): no - 1
    edges = voc_to_coco.main([str(voc07), "--split", "trainval", "--output", str(out),
                              "--zero-based"])
    assert [a["bbox"] for a in edges["annotations"]][1:] == [
        [10.0, 20.0, 19.0, 9.0], [3.0, 4.0, 4.0, 5.0], [2.0, 3.0, 10.0, 30.0]]


def test_voc_s_own_classes_are_its_20_only_for_a_voc_split() -> None:
    assert default_classes(VOC_CLASSES[:11]) == list(VOC_CLASSES)
    assert default_classes(["person", "car", "person"]) == ["car", "person"]
    assert default_classes(["person", "lamp"]) == ["lamp", "person"]


def test_a_cvat_export_s_sub_folders_split_ids_with_spaces_and_bom(tmp_path: Path,
                                                                   capsys) -> None:
    root = _devkit(tmp_path / "cvat", {"frame 1": (20, 10, [("car", (1, 1, 5, 5), "false")])},
                   {})
    for folder in ("Annotations/seq", "JPEGImages/seq"):
        (root / folder).mkdir(parents=True)
    cv2.imwrite(str(root / "JPEGImages/seq/f2.png"), np.zeros((10, 20, 3), np.uint8))
    (root / "Annotations/seq/f2.xml").write_text(
        _xml("seq/f2.png", 20, 10, [("car", (2, 2, 6, 6), "true")]), encoding="utf-8")
    (root / "ImageSets/Main/default.txt").write_bytes(
        "\ufeffframe 1\nseq/f2\n".encode("utf-8"))
    out = tmp_path / "out.json"
    for split in (["--split", "default"], []):  # the split file, or every XML, nested too
        coco = voc_to_coco.main([str(root), "--output", str(out), *split])
        assert [i["file_name"] for i in coco["images"]] == ["JPEGImages/frame 1.jpg",
                                                            "JPEGImages/seq/f2.png"]
        assert [a["iscrowd"] for a in coco["annotations"]] == [0, 1]
    assert "boxes have coordinates that are not whole numbers" not in capsys.readouterr().out
    (root / "Annotations/seq/f2.xml").write_text(
        _xml("seq/f2.png", 20, 10, [("car", (2.5, 2, 6.25, 6), 0)]), encoding="utf-8")
    voc_to_coco.main([str(root), "--output", str(out)])
    assert ("note: 1 boxes have coordinates that are not whole numbers, where VOC's are "
            "1-based pixel indices: an export of pixel edges (CVAT's) is read with "
            "--zero-based") in capsys.readouterr().out
    # whole numbers from 0: a 0-based export, read as 1-based without a word
    (root / "Annotations/seq/f2.xml").write_text(
        _xml("seq/f2.png", 20, 10, [("car", (0, 2, 6, 6), 0), ("car", (3, 0, 9, 6), 0)]),
        encoding="utf-8")
    voc_to_coco.main([str(root), "--output", str(out)])
    assert ("note: 2 boxes start at 0, where VOC's 1-based pixel indices start at 1 (each was "
            "clipped there): a 0-based export is read with --zero-based"
            ) in capsys.readouterr().out
    voc_to_coco.main([str(root), "--output", str(out), "--zero-based"])
    assert "note:" not in capsys.readouterr().out


def test_xml_files_saved_apart_from_their_images(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    Image.new("RGB", (30, 20)).save(tmp_path / "a.jpg")  # images in the dataset's root
    (tmp_path / "images").mkdir()
    Image.new("RGB", (30, 20)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "annotations" / "a.xml").write_text(
        _xml("a.jpg", 30, 20, [("bolt", (1, 1, 10, 10), 0)]), encoding="utf-8")
    with pytest.raises(DatasetError, match="its image is not in .*annotations"):
        voc_to_coco.main([str(tmp_path / "annotations"), "--output", str(tmp_path / "o.json")])
    coco = voc_to_coco.main([str(tmp_path / "annotations"), "--images",
                             str(tmp_path / "images"), "--output", str(tmp_path / "o.json")])
    assert coco["images"][0]["file_name"] == "a.jpg"  # under --images, the img_dir


def test_two_years_share_one_image_folder_and_a_split_takes_the_training_files_categories(
        voc07: Path, tmp_path: Path) -> None:
    voc12 = _devkit(tmp_path / "VOCdevkit" / "VOC2012", {
        "2008_000001": (20, 20, [("boat", (1, 1, 10, 10), 0)])}, {"trainval": ["2008_000001"]})
    train = tmp_path / "train.json"
    coco = voc_to_coco.main([str(voc07), str(voc12), "--split", "trainval", "--output",
                             str(train), "--classes", "dog", "person", "chair", "car", "boat"])
    assert [i["file_name"] for i in coco["images"]] == [
        "VOC2007/JPEGImages/000005.jpg", "VOC2007/JPEGImages/000007.jpg",
        "VOC2012/JPEGImages/2008_000001.jpg"]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 3, 4, 5]
    records, _, _ = load_coco_json(train, tmp_path / "VOCdevkit")
    assert len(records) == 3

    # the test split has no objects: its categories still are the training file's
    test = voc_to_coco.main([str(voc07), "--split", "test", "--output",
                             str(tmp_path / "test.json"), "--classes-from", str(train)])
    assert test["categories"] == coco["categories"] and test["annotations"] == []


def test_a_folder_of_labelimg_files_beside_their_images(tmp_path: Path) -> None:
    folder = tmp_path / "labels" / "day1"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(folder / "IMG 1.png")
    (folder / "IMG 1.xml").write_text(_xml("IMG 1.png", 64, 48, [("Cat", (5, 6, 64, 48), 0)]),
                                      encoding="utf-8")
    coco = voc_to_coco.main([str(tmp_path / "labels"), "--output", str(tmp_path / "out.json")])
    assert coco["images"] == [{"id": 1, "file_name": "day1/IMG 1.png", "height": 48,
                               "width": 64}]
    assert coco["categories"] == [{"id": 1, "name": "Cat", "supercategory": "none"}]
    assert coco["annotations"][0]["bbox"] == [4.0, 5.0, 60.0, 43.0]


@pytest.mark.parametrize("prefix", ["", "voc:"])
def test_xml_in_a_namespace_keeps_its_objects(tmp_path: Path, prefix: str) -> None:
    """findall("object") found none of a namespaced file's objects (a default xmlns, or every
    tag prefixed): the image was written without them (a background image), its size
    unchecked, without a word."""
    folder = tmp_path / "labels"
    folder.mkdir()
    Image.new("RGB", (64, 48)).save(folder / "a.png")
    text = re.sub(r"<(/?)", rf"<\1{prefix}",  # every tag in the namespace
                  _xml("a.png", 64, 48, [("cat", (5, 6, 64, 48), 0)]))
    declared = f'xmlns{":" + prefix[:-1] if prefix else ""}="http://www.example.org/voc"'
    text = text.replace(f"<{prefix}annotation>", f"<{prefix}annotation {declared}>", 1)
    (folder / "a.xml").write_text(text, encoding="utf-8")
    coco = voc_to_coco.main([str(folder), "--output", str(tmp_path / "out.json")])
    assert [(a["category_id"], a["bbox"]) for a in coco["annotations"]] == [
        (1, [4.0, 5.0, 60.0, 43.0])]


def test_classes_spelt_in_two_cases_are_said(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Dog in one file and dog in another became two categories without a word (one object
    then trained as two classes)."""
    import logging
    folder = tmp_path / "labels"
    folder.mkdir()
    for name, label in (("a", "Dog"), ("b", "dog"), ("c", "dog")):
        Image.new("RGB", (64, 48)).save(folder / f"{name}.png")
        (folder / f"{name}.xml").write_text(_xml(f"{name}.png", 64, 48, [(label, (5, 6, 60, 40),
                                                                            0)]),
                                            encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        coco = voc_to_coco.main([str(folder), "--output", str(tmp_path / "out.json")])
    assert [c["name"] for c in coco["categories"]] == ["Dog", "dog"]
    assert ("classes whose names differ only in case or spaces: 'Dog' (1 objects, "
            "first in "
            f"{folder / 'a.xml'}), 'dog' (2 objects, first in {folder / 'b.xml'}): they are 2 "
            "classes") in caplog.text


def test_an_xml_takes_the_image_of_its_own_name(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """An XML copied as a template kept the other image's <filename>: its boxes went onto that
    image and its own was left out, without a word (detectron2 and mmdetection read the image
    named as the XML). An upper-case .XML was looked for as .xml."""
    for name in ("x", "y"):
        Image.new("RGB", (64, 48)).save(tmp_path / f"{name}.png")
    (tmp_path / "x.xml").write_text(_xml("y.png", 64, 48, [("cat", (5, 6, 20, 30), 0)]),
                                    encoding="utf-8")
    (tmp_path / "y.XML").write_text(_xml("y.png", 64, 48, [("dog", (1, 1, 10, 10), 0)]),
                                    encoding="utf-8")
    coco = voc_to_coco.main([str(tmp_path), "--output", str(tmp_path / "out.json")])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    assert sorted((files[a["image_id"]], names[a["category_id"]])
                  for a in coco["annotations"]) == [("x.png", "cat"), ("y.png", "dog")]
    assert (f"note: 1 XML files name another image in <filename> than the one named as they "
            f"are (copied from another?): each was read with the image of its own name, as "
            f"detectron2's and mmdetection's readers do:\n  {tmp_path / 'x.xml'}: <filename> "
            f"{tmp_path / 'y.png'}") in capsys.readouterr().out
    # its own name exactly (IMG_1.aug.jpg is another item's, and sorts first), and of two
    # images of that name the one <filename> names
    other = tmp_path / "other"
    other.mkdir()
    for name, size in (("IMG_1.jpg", (64, 48)), ("IMG_1.aug.jpg", (80, 60)),
                       ("x.jpg", (30, 30)), ("x.png", (64, 48))):
        Image.new("RGB", size).save(other / name)
    for name, image in (("IMG_1", "IMG_1.jpg"), ("x", "x.png")):
        (other / f"{name}.xml").write_text(_xml(image, 64, 48, [("cat", (5, 6, 20, 30), 0)]),
                                           encoding="utf-8")
    coco = voc_to_coco.main([str(other), "--output", str(tmp_path / "other.json")])
    assert sorted(i["file_name"] for i in coco["images"]) == ["IMG_1.jpg", "x.png"]
    assert "note: " not in capsys.readouterr().out
    # <filename> reaching the same file by another path (absolute, ../)
    for written in (str(other / "x.png"), "../other/x.png"):
        (other / "x.xml").write_text(_xml(written, 64, 48, [("cat", (5, 6, 20, 30), 0)]),
                                     encoding="utf-8")
        coco = voc_to_coco.main([str(other), "--output", str(tmp_path / "other.json")])
        assert sorted(i["file_name"] for i in coco["images"]) == ["IMG_1.jpg", "x.png"]
        assert "note: " not in capsys.readouterr().out


def test_every_problem_is_named_and_nothing_is_written(voc07: Path, tmp_path: Path) -> None:
    annotations = voc07 / "Annotations"
    (annotations / "000005.xml").write_text(
        _xml("000005.jpg", 50, 40, [("dog", (1, 1, "12px", 40), 0),
                                    ("cat", (20, 1, 10, 40), 0)]), encoding="utf-8")
    (annotations / "000007.xml").write_text("<annotation><filename>000007.jpg", encoding="utf-8")
    (voc07 / "JPEGImages" / "000009.jpg").unlink()
    (voc07 / "ImageSets/Main/all.txt").write_text("000005\n000007\n000009\n")
    out = tmp_path / "out.json"
    with pytest.raises(DatasetError) as refused:
        voc_to_coco.main([str(voc07), "--split", "all", "--output", str(out)])
    message = str(refused.value)
    assert message.startswith("3 problems in the VOC annotations")
    assert "000005.xml object 0 (dog): <xmax> is not a number: '12px'" in message
    assert "000007.xml: not valid XML" in message
    assert "000009.xml: its image is not in" in message
    assert not out.exists()

    (annotations / "000005.xml").write_text(
        _xml("000005.jpg", 50, 40, [("cat", (20, 1, 10, 40), 0)]), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"object 0 \(cat\): xmax < xmin or ymax < ymin"):
        voc_to_coco.main([str(voc07), "--split", "all", "--output", str(out)])

    (annotations / "000005.xml").write_text(
        _xml("000005.jpg", 50, 40, [("cat", (1, 1, 10, 40), "maybe")]), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"object 0 \(cat\): <difficult> is 'maybe', not 0"):
        voc_to_coco.main([str(voc07), "--split", "all", "--output", str(out)])
    (annotations / "000005.xml").write_bytes(
        '<?xml version="1.0" encoding="gbk"?><annotation/>'.encode())
    with pytest.raises(DatasetError, match="000005.xml: cannot be decoded .*save it as UTF-8"):
        voc_to_coco.main([str(voc07), "--split", "all", "--output", str(out)])
    (annotations / "000007.xml").write_text(_xml("000007.jpg", 30, 60, []), encoding="utf-8")
    (voc07 / "ImageSets/Main/twice.txt").write_text("000007\n000007\n")
    with pytest.raises(DatasetError, match="000007.xml: its image .*000007.jpg is also "
                                           ".*000007.xml's"):
        voc_to_coco.main([str(voc07), "--split", "twice", "--output", str(out)])

    with pytest.raises(DatasetError, match=r"no such split file \(--split val; .*Main has "
                                           r"\['all', 'test', 'trainval', 'twice'\]\)"):
        voc_to_coco.main([str(voc07), "--split", "val", "--output", str(out)])
    assert not out.exists()


def test_names_outside_the_classes_and_sizes_other_than_the_images_are_refused(
        voc07: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with pytest.raises(DatasetError, match=r"not among the classes: 'chair' \(1 objects, first "
                                           r"in \S+/Annotations/000005.xml\), 'person' \(1 "
                                           r"objects, first in \S+/Annotations/\d+.xml\)"):
        voc_to_coco.main([str(voc07), "--split", "trainval", "--output", str(out),
                          "--classes", "dog", "car"])
    # an XML written for the image as stored, the image turned by its EXIF orientation
    (voc07 / "Annotations" / "000007.xml").write_text(
        _xml("000007.jpg", 60, 30, [("car", (2, 3, 12, 13), 0)]), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"<size> says 60x30, its image .*000007.jpg reads as "
                                           r"30x60 \(turned by its EXIF orientation\?: where "
                                           r"the boxes were drawn on the image as stored, as "
                                           r"LabelImg shows it, remove its orientation tag"):
        voc_to_coco.main([str(voc07), "--split", "trainval", "--output", str(out)])
    assert not out.exists()


def test_a_size_that_is_no_finite_number_is_read_from_the_image(voc07: Path,
                                                                tmp_path: Path) -> None:
    """<width>inf</width> was an OverflowError traceback; like a missing or zero size (some
    tools write 0), the image's own size is taken."""
    (voc07 / "Annotations" / "000007.xml").write_text(
        _xml("000007.jpg", "inf", 60, [("car", (2, 3, 12, 33), 0)]), encoding="utf-8")
    coco = voc_to_coco.main([str(voc07), "--split", "trainval", "--output",
                             str(tmp_path / "out.json")])
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(50, 40), (30, 60)]


def test_a_box_with_no_area_inside_its_image_is_refused(voc07: Path, tmp_path: Path) -> None:
    """A box wholly outside its image (or of no width, read as pixel edges) was clipped to a
    box of no area and written, exit 0: an object no detection can match."""
    (voc07 / "Annotations" / "000007.xml").write_text(
        _xml("000007.jpg", 30, 60, [("car", (2, 3, 12, 33), 0), ("car", (31, 3, 40, 33), 0)]),
        encoding="utf-8")
    out = tmp_path / "out.json"
    with pytest.raises(DatasetError, match=r"000007.xml object 1 \(car\): <bndbox> \[31.0, 3.0, "
                                           r"40.0, 33.0\] has no area inside its 30x60 image"):
        voc_to_coco.main([str(voc07), "--split", "trainval", "--output", str(out)])
    (voc07 / "Annotations" / "000007.xml").write_text(
        _xml("000007.jpg", 30, 60, [("car", (2, 3, 2, 33), 0)]), encoding="utf-8")
    assert voc_to_coco.main([str(voc07), "--split", "trainval", "--output", str(out)])[
        "annotations"][-1]["bbox"] == [1.0, 2.0, 1.0, 31.0]  # one pixel wide, 1-based
    with pytest.raises(DatasetError, match=r"object 0 \(car\): <bndbox> .* has no area"):
        voc_to_coco.main([str(voc07), "--split", "trainval", "--output", str(out),
                          "--zero-based"])


def test_an_output_that_is_a_file_read_is_refused(voc07: Path, tmp_path: Path) -> None:
    """--output of an XML file (or of the --classes-from file) replaced it with the COCO file,
    exit 0."""
    xml = voc07 / "Annotations" / "000007.xml"
    before = xml.read_bytes()
    with pytest.raises(DatasetError, match="--output .*000007.xml is one of the XML files read: "
                                           "the COCO file would replace it"):
        voc_to_coco.main([str(voc07), "--split", "trainval", "--output", str(xml)])
    assert xml.read_bytes() == before
    train = tmp_path / "trainval.json"
    voc_to_coco.main([str(voc07), "--split", "trainval", "--output", str(train)])
    before = train.read_bytes()
    with pytest.raises(DatasetError, match="--output .*trainval.json is the --classes-from "
                                           "file: the COCO file would replace it"):
        voc_to_coco.main([str(voc07), "--split", "test", "--output", str(train),
                          "--classes-from", str(train)])
    assert train.read_bytes() == before


def test_the_command_line_prints_the_problem_and_exits_2(voc07: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools/voc_to_coco.py"), str(voc07),
                           "--split", "val", "--output", str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("voc_to_coco.py: error: ") and "val.txt: no such split" \
        in done.stderr


def test_boxes_reaching_past_their_image_are_counted(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A LabelImg box dragged past the picture's edge was clipped without a word (the
    fractional and at-zero notes were said)."""
    root = _devkit(tmp_path / "VOC", {"a": (120, 90, [("cat", (100, 70, 140, 110), 0),
                                                      ("cat", (1, 1, 120, 90), 0)]),
                                      "b": (30, 60, [("cat", (-3, 2, 12, 33), 0)])},
                   {"all": ["a", "b"]})
    coco = voc_to_coco.main([str(root), "--split", "all", "--output", str(tmp_path / "o.json")])
    assert [a["bbox"] for a in coco["annotations"]] == [[99.0, 69.0, 21.0, 21.0],
                                                        [0.0, 0.0, 120.0, 90.0],
                                                        [0.0, 1.0, 12.0, 32.0]]
    assert "note: 2 boxes reach past their image: clipped to it\n" in capsys.readouterr().out
