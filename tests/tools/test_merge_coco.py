"""tools/merge_coco.py: COCO files with their image folders as one file (categories by name,
new ids, one image per file named twice, file names under the common folder), worked out by
hand; every problem named with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_detect.engine.data import DatasetError, load_coco_json
from tests.tools.test_train_eval_demo import load_tool

merge_coco = load_tool("merge_coco")


def _coco(path: Path, categories: dict[int, str], images: list[tuple[int, str, int, int]],
          objects: list[tuple[int, int, list[float]]], **image_extra: object) -> Path:
    """categories {id: name}; images (id, file_name, width, height); objects (image id,
    category id, bbox)."""
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f, "width": w, "height": h, **image_extra}
                   for i, f, w, h in images],
        "annotations": [{"id": 100 + k, "image_id": i, "category_id": c, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0}
                        for k, (i, c, b) in enumerate(objects)],
        "categories": [{"id": i, "name": n, "supercategory": "animal"}
                       for i, n in categories.items()]}), encoding="utf-8")
    return path


@pytest.fixture()
def three_files(tmp_path: Path) -> list[str]:
    """--input arguments: VOC07 and VOC12 in their folders, and a second file of VOC07's
    images (labelled in parts)."""
    for folder, names in (("voc07/JPEGImages", ["a.jpg", "b.jpg"]),
                          ("voc12/JPEGImages", ["c.jpg"])):
        (tmp_path / folder).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (40, 30)).save(tmp_path / folder / name)
    first = _coco(tmp_path / "07.json", {5: "dog", 2: "cat"},
                  [(7, "a.jpg", 40, 30), (9, "b.jpg", 40, 30)],
                  [(7, 5, [1, 2, 10, 10]), (9, 2, [0, 0, 5, 5])])
    second = _coco(tmp_path / "12.json", {1: "cat", 2: "bird", 3: "dog"},
                   [(1, "c.jpg", 40, 30)], [(1, 2, [3, 3, 4, 4]), (1, 3, [0, 1, 2, 3])],
                   neg_category_ids=[2, 3])
    third = _coco(tmp_path / "07more.json", {1: "cat"}, [(3, "a.jpg", 40, 30)],
                  [(3, 1, [20, 10, 8, 8])])
    return ["--input", str(first), str(tmp_path / "voc07/JPEGImages"),
            "--input", str(second), str(tmp_path / "voc12/JPEGImages"),
            "--input", str(third), str(tmp_path / "voc07/JPEGImages")]


def test_three_files_become_one_by_category_name(three_files: list[str],
                                                 tmp_path: Path) -> None:
    out = tmp_path / "0712.json"
    coco = merge_coco.main([*three_files, "--output", str(out)])
    assert json.loads(out.read_text()) == coco
    # the first file's ids (cat 2, dog 5), then the new name with the next id
    assert coco["categories"] == [{"id": 2, "name": "cat", "supercategory": "animal"},
                                  {"id": 5, "name": "dog", "supercategory": "animal"},
                                  {"id": 6, "name": "bird", "supercategory": "animal"}]
    # file names under the common folder; a.jpg, which two files name, once; LVIS's lists by
    # name (the second file's 2 = bird, 3 = dog)
    assert [(i["id"], i["file_name"]) for i in coco["images"]] == [
        (1, "voc07/JPEGImages/a.jpg"), (2, "voc07/JPEGImages/b.jpg"),
        (3, "voc12/JPEGImages/c.jpg")]
    assert "neg_category_ids" not in coco["images"][0]
    assert coco["images"][2]["neg_category_ids"] == [6, 5]
    assert [(a["id"], a["image_id"], a["category_id"], a["bbox"])
            for a in coco["annotations"]] == [
        (1, 1, 5, [1, 2, 10, 10]), (2, 2, 2, [0, 0, 5, 5]),
        (3, 3, 6, [3, 3, 4, 4]), (4, 3, 5, [0, 1, 2, 3]), (5, 1, 2, [20, 10, 8, 8])]
    # as training reads it: image a with its dog from 07.json and its cat from 07more.json
    records, mapping, _ = load_coco_json(out, tmp_path)
    assert mapping.names == ("cat", "dog", "bird")
    a = next(r for r in records if r["file_name"].endswith("voc07/JPEGImages/a.jpg"))
    np.testing.assert_array_equal(a["boxes"], [[1, 2, 11, 12], [20, 10, 28, 18]])
    np.testing.assert_array_equal(a["classes"], [1, 0])


def test_classes_fixed_by_another_file_and_every_problem_named(three_files: list[str],
                                                               tmp_path: Path) -> None:
    classes = _coco(tmp_path / "classes.json", {1: "dog", 2: "cat", 3: "bird"}, [], [])
    coco = merge_coco.main([*three_files, "--output", str(tmp_path / "m.json"),
                            "--classes-from", str(classes), "--img-dir", str(tmp_path.parent)])
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "dog"), (2, "cat"),
                                                                  (3, "bird")]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 3, 1, 2]
    assert coco["images"][2]["file_name"] == f"{tmp_path.name}/voc12/JPEGImages/c.jpg"
    out = tmp_path / "bad.json"
    # bird left out of the classes; c.jpg gone and outside --img-dir; a.jpg given another
    # size; two "cat"s
    (tmp_path / "voc12/JPEGImages/c.jpg").unlink()
    bad = _coco(tmp_path / "parts.json", {1: "cat", 4: "cat"}, [(3, "a.jpg", 50, 30)], [])
    with pytest.raises(DatasetError) as refused:
        merge_coco.main([*three_files, "--input", str(bad), str(tmp_path / "voc07/JPEGImages"),
                         "--output", str(out), "--classes", "dog", "cat",
                         "--img-dir", str(tmp_path / "voc07")])
    message = str(refused.value)
    assert f"{bad}: categories of the same name (matched by name here): 'cat' (ids [1, 4])" \
        in message
    # (the file too: a typo in one of many files)
    assert (f"names not among the classes: 'bird' (1 objects, first in "
            f"{tmp_path / '12.json'})") in message
    assert f"{bad}: image a.jpg is 50x30, another file gives 40x30" in message
    assert (f"{tmp_path / '12.json'}: 1 of 1 images not found under "
            f"{tmp_path / 'voc12/JPEGImages'} (is it this file's image folder?):\n  c.jpg"
            ) in message
    assert (f"{tmp_path / '12.json'}: image {tmp_path / 'voc12/JPEGImages/c.jpg'} is outside "
            f"the img_dir {tmp_path / 'voc07'}") in message
    assert not out.exists()
    with pytest.raises(DatasetError, match=f"image folders not found:\n  {tmp_path}/nowhere"):
        merge_coco.main(["--input", str(tmp_path / "07.json"), str(tmp_path / "nowhere"),
                         "--output", str(out)])


def test_lvis_lists_that_are_not_lists_of_ids_are_named(three_files: list[str],
                                                       tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    Image.new("RGB", (40, 30)).save(tmp_path / "voc07/JPEGImages/d.jpg")
    bad = _coco(tmp_path / "lvis.json", {1: "cat"}, [(4, "d.jpg", 40, 30)], [],
                neg_category_ids=1, not_exhaustive_category_ids=["cat"])
    with pytest.raises(DatasetError) as refused:
        merge_coco.main([*three_files, "--input", str(bad), str(tmp_path / "voc07/JPEGImages"),
                         "--output", str(out)])
    message = str(refused.value)
    assert f"{bad}: image id 4: neg_category_ids must be a list of category ids, got 1" \
        in message
    assert (f"{bad}: image id 4: not_exhaustive_category_ids must be a list of category ids, "
            f"got ['cat']") in message
    assert not out.exists()


def test_symlinked_folders_and_files_keep_the_paths_given(tmp_path: Path) -> None:
    """detectron2's datasets/coco -> /data/coco, DVC's files linked into a cache, a folder
    named "..data": the file names were made under the links' targets (refused with --img-dir
    as "outside the img_dir"); one file given twice doubled every object."""
    store = tmp_path / "store"
    store.mkdir()
    Image.new("RGB", (40, 30)).save(store / "obj0", format="JPEG")
    (tmp_path / "real/coco").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "real/coco/a.jpg")
    datasets = tmp_path / "datasets"
    (datasets / "..data").mkdir(parents=True)
    (datasets / "coco").symlink_to(tmp_path / "real/coco")
    (datasets / "..data/b.jpg").symlink_to(store / "obj0")
    first = _coco(tmp_path / "a.json", {1: "cat"}, [(1, "a.jpg", 40, 30)], [(1, 1, [0, 0, 4, 4])])
    second = _coco(tmp_path / "b.json", {1: "cat"}, [(1, "b.jpg", 40, 30)],
                   [(1, 1, [1, 1, 4, 4])])
    args = ["--input", str(first), str(datasets / "coco"),
            "--input", str(second), str(datasets / "..data"), "--output", str(tmp_path / "m.json")]
    coco = merge_coco.main([*args, "--img-dir", str(datasets)])
    assert [i["file_name"] for i in coco["images"]] == ["coco/a.jpg", "..data/b.jpg"]
    assert [i["file_name"] for i in merge_coco.main(args)["images"]] == [
        "coco/a.jpg", "..data/b.jpg"]  # their common folder: datasets, not tmp_path
    with pytest.raises(DatasetError, match=f"--input given twice:\n  {first} "):
        merge_coco.main([*args, "--input", str(first), str(datasets / "coco/")])


def test_windows_file_names_are_read_as_training_reads_them(tmp_path: Path) -> None:
    """A file_name written on Windows (sub\\z.png), which training and browse_dataset read,
    was "not found" by the merge."""
    (tmp_path / "B/sub").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "B/sub/z.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    first = _coco(tmp_path / "a.json", {1: "cat"}, [(1, "a.png", 40, 30)], [(1, 1, [0, 0, 4, 4])])
    second = _coco(tmp_path / "b.json", {1: "cat"}, [(1, "sub\\z.png", 40, 30)],
                   [(1, 1, [1, 1, 4, 4])])
    coco = merge_coco.main(["--input", str(first), str(tmp_path), "--input", str(second),
                            str(tmp_path / "B"), "--output", str(tmp_path / "m.json")])
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "B/sub/z.png"]


def test_an_output_that_is_an_input_is_refused(three_files: list[str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """It replaced the input file with the merge (its licenses gone), exit 0."""
    before = (tmp_path / "12.json").read_bytes()
    with pytest.raises(SystemExit) as stopped:
        merge_coco.main([*three_files, "--output", str(tmp_path / "sub/../12.json")])
    assert stopped.value.code == 2
    assert "is one of the --input files: write the merge to another file" in \
        capsys.readouterr().err
    assert (tmp_path / "12.json").read_bytes() == before


def test_an_output_that_is_the_classes_from_file_is_refused(three_files: list[str],
                                                            tmp_path: Path) -> None:
    """It replaced the file whose categories it took (a training file) with the merge, exit
    0 (voc_to_coco and labelme_to_coco read --classes-from the same way)."""
    classes = _coco(tmp_path / "classes.json", {1: "dog", 2: "cat", 3: "bird"}, [], [])
    before = classes.read_bytes()
    with pytest.raises(DatasetError, match="--output .*classes.json is the --classes-from "
                                           "file: the COCO file would replace it"):
        merge_coco.main([*three_files, "--output", str(tmp_path / "sub/../classes.json"),
                         "--classes-from", str(classes)])
    assert classes.read_bytes() == before


def test_an_object_an_earlier_file_gives_is_kept_once(tmp_path: Path, capsys,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Two exports of the same photos (a relabelled copy, an overlapping split) doubled every
    object they share without a word: in a val file each copy is a missed object. Numbers
    that differ by a percent-to-pixel round trip's noise are the same; an object boxed almost
    as another file's is kept and warned of (a corrected export); the shared images are
    counted."""
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (40, 30)).save(tmp_path / "img" / name)
    polygon = [[1.0, 1.0, 9.0, 1.0, 9.0, 9.0]]
    first = _coco(tmp_path / "1.json", {1: "cat", 2: "dog"},
                  [(1, "a.jpg", 40, 30), (2, "b.jpg", 40, 30)],
                  [(1, 1, [1, 1, 8, 8]), (1, 1, [1, 1, 8, 8]), (1, 2, [5, 5, 4, 4]),
                   (2, 1, [0, 0, 3, 3])])
    data = json.loads(first.read_text())
    data["annotations"][2]["segmentation"] = polygon
    first.write_text(json.dumps(data), encoding="utf-8")
    # the same photo a.jpg under other ids; its cat (same box) and dog (same box and mask)
    # again, a dog with another mask, a cat with another box
    second = _coco(tmp_path / "2.json", {3: "dog", 4: "cat"}, [(10, "a.jpg", 40, 30)],
                   [(10, 4, [1.0, 1.0, 8.0, 8.0]), (10, 3, [5, 5, 4, 4]), (10, 3, [5, 5, 4, 4]),
                    (10, 4, [1, 1, 8, 9])])  # (the cat's box written in floats: the same)
    # (a float's noise in the first cat's box: the same)
    second_data = json.loads(second.read_text())
    second_data["annotations"][0]["bbox"] = [1 * 1.0000000000000002, 1.0, 8.0,
                                             8 * 1.0000000000000002]
    second.write_text(json.dumps(second_data), encoding="utf-8")
    data = json.loads(second.read_text())
    data["annotations"][1]["segmentation"] = polygon
    data["annotations"][2]["segmentation"] = [[1.0, 1.0, 9.0, 1.0, 9.0, 8.0]]
    second.write_text(json.dumps(data), encoding="utf-8")
    coco = merge_coco.main(["--input", str(first), str(tmp_path / "img"), "--input",
                            str(second), str(tmp_path / "img"), "--output",
                            str(tmp_path / "out.json")])
    assert [(a["id"], a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]
            ] == [(1, 1, 1, [1, 1, 8, 8]), (2, 1, 1, [1, 1, 8, 8]), (3, 1, 2, [5, 5, 4, 4]),
                  (4, 2, 1, [0, 0, 3, 3]), (5, 1, 2, [5, 5, 4, 4]), (6, 1, 1, [1, 1, 8, 9])]
    assert coco["annotations"][4]["segmentation"] == [[1.0, 1.0, 9.0, 1.0, 9.0, 8.0]]
    assert ("2 images, 6 objects, 0 crowd regions from 2 files (1 image(s) named by several "
            "files, their objects joined; 2 objects an earlier file gives too left out)"
            ) in capsys.readouterr().out
    # the dog of another mask, of the same box (the cat of a box 8 pixels taller: IoU 0.89)
    assert ("1 objects of a later file have a box of the same class overlapping an earlier "
            "file's by IoU 0.9 or more on the same image, and another box or mask: both are "
            "kept") in caplog.text


@pytest.mark.parametrize("tool", ["merge_coco", "voc_to_coco", "labelme_to_coco"])
def test_an_output_that_is_a_folder_or_empty_is_named_before_the_inputs_are_read(
        tool: str, tmp_path: Path) -> None:
    """`--output DIR` said "DIR: cannot be written ([Errno 21] Is a directory:
    '.DIR.<hex>.tmp' -> ...)" after the conversion, `--output ""` "Device or resource busy"."""
    from resnet_detect.engine.files import UnwritableFolderError
    main = load_tool(tool).main
    inputs = (["--input", str(tmp_path / "none.json"), str(tmp_path)] if tool == "merge_coco"
              else [str(tmp_path / "none")])  # never read
    with pytest.raises(UnwritableFolderError, match=rf"^--output {tmp_path} is a folder: name "
                                                    rf"the file to write \(e\.g\. "):
        main([*inputs, "--output", str(tmp_path)])
    with pytest.raises(UnwritableFolderError, match=r"^--output is empty: name the file"):
        main([*inputs, "--output", ""])
    (tmp_path / "file").write_text("")
    with pytest.raises(UnwritableFolderError, match=rf"^--output {tmp_path}/file/sub/out.json: "
                                                    rf"{tmp_path}/file is a file, not a folder$"):
        main([*inputs, "--output", str(tmp_path / "file/sub/out.json")])


def test_lvis_v05_names_of_coco_2014_are_merged_by_their_coco_url(tmp_path: Path) -> None:
    """LVIS v0.5's file_names are COCO 2014's beside COCO 2017 coco_urls: training reads them
    by the URL, the merge refused them ("1 of 1 images not found")."""
    (tmp_path / "coco/val2017").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "coco/val2017/000000000139.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "coco/a.jpg")
    lvis = _coco(tmp_path / "lvis05.json", {1: "cat"},
                 [(139, "COCO_val2014_000000000139.jpg", 40, 30)], [(139, 1, [1, 2, 10, 10])],
                 coco_url="http://images.cocodataset.org/val2017/000000000139.jpg")
    other = _coco(tmp_path / "a.json", {1: "cat"}, [(1, "a.jpg", 40, 30)],
                  [(1, 1, [1, 1, 5, 5])])
    coco = merge_coco.main(["--input", str(lvis), str(tmp_path / "coco"),
                            "--input", str(other), str(tmp_path / "coco"),
                            "--output", str(tmp_path / "merged.json")])
    assert [img["file_name"] for img in coco["images"]] == ["val2017/000000000139.jpg", "a.jpg"]


def test_licenses_are_kept_and_names_alike_but_for_case_are_warned_of(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys) -> None:
    """The files' `licenses` (Roboflow's CC BY 4.0) were dropped, the images' license ids left
    naming nothing; 'cross' and 'cross ' of two tools' exports merged as two classes without a
    word (training warned of it later)."""
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        Image.new("RGB", (40, 30)).save(tmp_path / "img" / name)
    cc_by = {"id": 1, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"}
    first = _coco(tmp_path / "1.json", {1: "cross"}, [(1, "a.jpg", 40, 30)],
                  [(1, 1, [1, 1, 8, 8])], license=1)
    # (d.jpg twice in one file: one image, not one that several files name)
    second = _coco(tmp_path / "2.json", {1: "Cross "}, [(1, "b.jpg", 40, 30),
                                                       (2, "c.jpg", 40, 30),
                                                       (3, "d.jpg", 40, 30),
                                                       (4, "d.jpg", 40, 30)],
                   [(1, 1, [1, 1, 8, 8])])
    for path, licenses, ids in ((first, [cc_by], None),
                                (second, [{"id": 3, "name": "private", "url": ""},
                                          {**cc_by, "id": 4}], [4, 3, 99])):
        data = json.loads(path.read_text())
        data["licenses"] = licenses
        for img, given in zip(data["images"], ids or []):
            img["license"] = given
        path.write_text(json.dumps(data), encoding="utf-8")
    with caplog.at_level("WARNING"):
        coco = merge_coco.main(["--input", str(first), str(tmp_path / "img"), "--input",
                                str(second), str(tmp_path / "img"), "--output",
                                str(tmp_path / "out.json")])
    assert coco["licenses"] == [cc_by, {"id": 2, "name": "private", "url": ""}]
    assert [(img["file_name"], img["license"]) for img in coco["images"][:3]] == [
        ("a.jpg", 1), ("b.jpg", 1), ("c.jpg", 2)]
    assert "license" not in coco["images"][3]  # 99: none of its file's
    assert "1 images name a license id their file's `licenses` lacks: written without one" \
        in caplog.text
    assert "images named by several files" not in capsys.readouterr().out
    assert ("classes whose names differ only in case or spaces: 'cross' (1 objects, first in "
            f"{first}), 'Cross ' (1 objects, first in {second}): they are 2 classes"
            ) in caplog.text
