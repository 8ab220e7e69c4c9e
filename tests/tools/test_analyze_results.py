"""tools/analyze_results.py on a tiny synthetic COCO set: the CSV ranks the images by their
own AP, the best and worst are drawn, bad input is named."""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import DatasetError, UnreadableImageError
from resnet_detect.engine.data.synthetic import generate

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"
HEIGHT, WIDTH = 96, 128


_spec = importlib.util.spec_from_file_location("analyze_results_tool",
                                               ROOT / "tools/analyze_results.py")
analyze_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(analyze_results)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    generate(root, num_train=1, num_val=5, size=(HEIGHT, WIDTH), cls_train_per_class=1,
             cls_val_per_class=1)
    return root


def args(data: Path, results: Path, out: Path, *extra: str) -> list[str]:
    return [str(CONFIG), f"data.val.ann_file={data}/coco/val.json",
            f"data.val.img_dir={data}/images/val", "--results", str(results), "--output",
            str(out), *extra]


def results_file(data: Path, path: Path, *, found: int, masks: bool = False) -> list[int]:
    """The val file's own objects as detections in the first `found` images with objects,
    none in the others; returns the ids of those images, in order."""
    coco = COCO(str(data / "coco/val.json"))
    ids = [i for i in sorted(coco.imgs) if coco.getAnnIds(imgIds=i, iscrowd=False)]
    results = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=ids[:found], iscrowd=False)):
        r = {"image_id": ann["image_id"], "category_id": ann["category_id"],
             "bbox": ann["bbox"], "score": 0.9}
        if masks:
            rle = coco.annToRLE(ann)
            r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        results.append(r)
    path.write_text(json.dumps(results), encoding="utf-8")
    return ids


def test_images_ranked_by_their_own_ap_and_the_best_and_worst_drawn(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ids = results_file(data, tmp_path / "r.json", found=2)
    scores = analyze_results.main(args(data, tmp_path / "r.json", tmp_path / "out", "--topk", "2"))
    assert {s.image_id: s.ap for s in scores} == {i: 1.0 if i in ids[:2] else 0.0 for i in ids}
    rows = list(csv.DictReader((tmp_path / "out/per_image_ap.csv").open()))
    assert [r["ap"] for r in rows] == ["0.00"] * (len(ids) - 2) + ["100.00"] * 2
    coco = COCO(str(data / "coco/val.json"))
    worst = sorted(ids[2:], key=lambda i: (-len(coco.getAnnIds(imgIds=i, iscrowd=False)), i))
    assert [int(r["image_id"]) for r in rows[:len(worst)]] == worst  # more objects first
    for folder, first in (("best", "100.0"), ("worst", "0.0")):
        names = sorted(p.name for p in (tmp_path / "out" / folder).iterdir())
        assert len(names) == 2 and names[0].startswith(f"001-AP{first}-")
        picture = cv2.imread(str(tmp_path / "out" / folder / names[0]))
        assert picture.shape == (HEIGHT + 24, 2 * WIDTH + 6, 3)
    out = capsys.readouterr().out
    assert f"{len(ids)} images ranked by bbox AP" in out and "worst: " in out
    analyze_results.main(args(data, tmp_path / "r.json", tmp_path / "out", "--topk", "1"))
    assert len(list((tmp_path / "out/best").iterdir())) == 1  # the earlier pictures replaced
    analyze_results.main(args(data, tmp_path / "r.json", tmp_path / "out", "--topk", "0"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["per_image_ap.csv"]
    # a result of a category the val file lacks is warned of and not scored: not counted
    # among the image's detections either (it was)
    results = json.loads((tmp_path / "r.json").read_text())
    (tmp_path / "r2.json").write_text(json.dumps(results + [{**results[0], "category_id": 4242}]))
    analyze_results.main(args(data, tmp_path / "r2.json", tmp_path / "out2", "--topk", "0"))
    assert list(csv.DictReader((tmp_path / "out2/per_image_ap.csv").open())) == list(
        csv.DictReader((tmp_path / "out/per_image_ap.csv").open()))



def test_a_results_file_without_detections_is_said(data: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """[] ranked every image at AP 0 without a word."""
    (tmp_path / "none.json").write_text("[]")
    with caplog.at_level(logging.WARNING):
        scores = analyze_results.main(args(data, tmp_path / "none.json", tmp_path / "o",
                                           "--topk", "0"))
    assert {s.ap for s in scores} <= {0.0, None}
    assert f"{tmp_path / 'none.json'} holds no detections: every image with objects scores " \
           f"AP 0" in caplog.text


def test_mask_ap_and_bad_input(data: Path, tmp_path: Path,
                               caplog: pytest.LogCaptureFixture) -> None:
    ids = results_file(data, tmp_path / "m.json", found=1, masks=True)
    scores = analyze_results.main(args(data, tmp_path / "m.json", tmp_path / "m", "--iou-type",
                                   "segm", "--topk", "1"))
    assert [s.ap for s in scores if s.image_id in ids] == [1.0] + [0.0] * (len(ids) - 1)
    # the ground truth is drawn with its masks as in bbox mode (the segm scoring had turned
    # them into RLEs of bytes, drawn as no mask at all)
    analyze_results.main(args(data, tmp_path / "m.json", tmp_path / "b", "--topk", "1"))
    (segm_best,), (bbox_best,) = ((tmp_path / run / "best").iterdir() for run in "mb")
    assert segm_best.name.split("-", 2)[2] == bbox_best.name.split("-", 2)[2]
    segm_picture, bbox_picture = (cv2.imread(str(p)) for p in (segm_best, bbox_best))
    assert np.array_equal(segm_picture, bbox_picture)
    # a mask of another size than its image's: named (it was scored, then drawing crashed)
    missized = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    missized[1]["segmentation"]["size"] = [HEIGHT + 1, WIDTH]
    (tmp_path / "x.json").write_text(json.dumps(missized), encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"x.json: result 1: a mask of size \[{HEIGHT + 1}, "
                                           rf"{WIDTH}\] on image \d+ of size \[{HEIGHT}, "):
        analyze_results.main(args(data, tmp_path / "x.json", tmp_path / "x", "--iou-type", "segm"))
    # objects without masks: ignored in segm, said; none with a mask: refused
    val = json.loads((data / "coco/val.json").read_text(encoding="utf-8"))
    for ann in val["annotations"][:2]:
        del ann["segmentation"]
    (tmp_path / "some.json").write_text(json.dumps(val), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        analyze_results.main([*args(data, tmp_path / "m.json", tmp_path / "m", "--iou-type", "segm",
                                "--topk", "0"), f"data.val.ann_file={tmp_path / 'some.json'}"])
    assert any("2 objects without a usable mask are ignored" in r.getMessage()
               for r in caplog.records if r.levelno >= logging.WARNING)
    for ann in val["annotations"]:
        ann.pop("segmentation", None)
    (tmp_path / "none.json").write_text(json.dumps(val), encoding="utf-8")
    with pytest.raises(DatasetError, match="has no object with a usable mask: --iou-type segm "
                                           "has nothing to score"):
        analyze_results.main([*args(data, tmp_path / "m.json", tmp_path / "m", "--iou-type",
                                    "segm"), f"data.val.ann_file={tmp_path / 'none.json'}"])
    boxes_only = tmp_path / "b.json"
    results_file(data, boxes_only, found=1)
    with pytest.raises(DatasetError, match="--iou-type segm needs a segmentation in every"):
        analyze_results.main(args(data, boxes_only, tmp_path / "b", "--iou-type", "segm"))
    foreign = tmp_path / "f.json"
    foreign.write_text(json.dumps([{"image_id": 4242, "category_id": 1, "bbox": [0, 0, 5, 5],
                                    "score": 0.5}]), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"results of images that .*val.json lacks "
                                           r"\(ids \[4242\]\)"):
        analyze_results.main(args(data, foreign, tmp_path / "f"))
    # results no category of which is scored: AP 0 everywhere, without a word (0-based labels,
    # another dataset's ids, or another data.classes subset)
    own = json.loads(boxes_only.read_text())
    (tmp_path / "zero.json").write_text(json.dumps([{**r, "category_id": 0} for r in own]))
    with pytest.raises(DatasetError, match=rf"zero.json: none of its {len(own)} results is of a "
                                           rf"category scored here: {len(own)} have category "
                                           rf"ids \[0\] that .*val.json lacks \(results of "
                                           rf"another dataset's ids, of 0-based labels"):
        analyze_results.main(args(data, tmp_path / "zero.json", tmp_path / "z"))
    names = {c["id"]: c["name"] for c in json.loads((data / "coco/val.json").read_text())[
        "categories"]}
    found = sorted({r["category_id"] for r in own})
    other = next(i for i in names if i not in found)
    with pytest.raises(DatasetError, match=rf"none of its {len(own)} results is of a category "
                                           rf"scored here, the categories data.classes keeps "
                                           rf"\(\['{names[other]}: {other}'\]\): {len(own)} are "
                                           rf"of categories data.classes leaves out"):
        analyze_results.main([*args(data, boxes_only, tmp_path / "o"),
                              f"data.classes=[{names[other]}]"])
    (tmp_path / "some.json").write_text(json.dumps(own + [{**own[0], "category_id": 4242}]))
    with caplog.at_level(logging.WARNING):
        analyze_results.main([*args(data, tmp_path / "some.json", tmp_path / "s", "--topk",
                                    "0"), f"data.classes=[{names[other]},{names[found[0]]}]"])
    left_out = sum(r["category_id"] != found[0] for r in own)
    assert any(f"some.json: of its {len(own) + 1} results, 1 have category ids [4242] that "
               in r.getMessage() and (f"; {left_out} are of categories data.classes leaves out"
                                      in r.getMessage()) == bool(left_out)
               for r in caplog.records if r.levelno >= logging.WARNING)
    # tools/eval.py --results the same
    from resnet_detect.detection.score_results import score_results_file
    with pytest.raises(DatasetError, match=r"zero.json: none of its .* results is of a category "
                                           r"scored here"):
        score_results_file(str(CONFIG), str(tmp_path / "zero.json"), tmp_path / "e",
                           [f"data.val.ann_file={data}/coco/val.json"])
    seg = ROOT / "configs/synthetic/deeplabv3_R_18_os16.yaml"
    with pytest.raises(ConfigError, match="analyzes detection results; .* is a 'sem_seg'"):
        analyze_results.main([str(seg), "--results", str(boxes_only), "--output", str(tmp_path)])
    with pytest.raises(ConfigError, match="--topk is a number of images, 0 or more, got -1"):
        analyze_results.main(args(data, boxes_only, tmp_path / "b", "--topk", "-1"))


def test_an_unreadable_image_is_named_and_the_others_drawn(data: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    val = json.loads((data / "coco/val.json").read_text(encoding="utf-8"))
    for img in val["images"]:
        (images / img["file_name"]).write_bytes((data / "images/val" / img["file_name"])
                                                .read_bytes())
    broken = images / val["images"][0]["file_name"]
    broken.write_bytes(b"")
    results_file(data, tmp_path / "r.json", found=len(val["images"]))
    with pytest.raises(UnreadableImageError, match=f"could not be read or drawn, the others "
                                                   f"are:\n  {broken}: an empty file"):
        analyze_results.main(args(data, tmp_path / "r.json", tmp_path / "out", "--topk", "10",
                              f"data.val.img_dir={images}"))
    assert len(list((tmp_path / "out/best").iterdir())) == len(val["images"]) - 1
    assert (tmp_path / "out/per_image_ap.csv").is_file()
    assert not list((tmp_path / "out").glob(".*"))  # no partial folder left


def test_lvis_v05_names_of_coco_2014_are_drawn_from_their_coco_url(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """LVIS v0.5's file_names are COCO 2014's beside COCO 2017 coco_urls: training and the
    evaluation read them by the URL, the drawing failed on every image."""
    val = json.loads((data / "coco/val.json").read_text(encoding="utf-8"))
    (tmp_path / "coco/val2017").mkdir(parents=True)
    for img in val["images"]:
        name = f"{img['id']:012d}.jpg"
        cv2.imwrite(str(tmp_path / "coco/val2017" / name),
                    cv2.imread(str(data / "images/val" / img["file_name"])))
        img["file_name"] = f"COCO_val2014_{name}"
        img["coco_url"] = f"http://images.cocodataset.org/val2017/{name}"
        img["neg_category_ids"], img["not_exhaustive_category_ids"] = [], []
    (tmp_path / "lvis05.json").write_text(json.dumps(val), encoding="utf-8")
    results_file(data, tmp_path / "r.json", found=len(val["images"]))
    analyze_results.main([*args(data, tmp_path / "r.json", tmp_path / "out", "--topk", "10"),
                          f"data.val.ann_file={tmp_path / 'lvis05.json'}",
                          f"data.val.img_dir={tmp_path / 'coco'}"])
    assert len(list((tmp_path / "out/best").iterdir())) == len(val["images"])
    # the per-image APs are COCO's (as said), not LVIS's federated ones
    assert (f"{len(val['images'])} images ranked by bbox AP (by COCO's rules: not LVIS's "
            f"federated AP)") in capsys.readouterr().out


def test_with_data_classes_the_maskless_count_is_of_the_chosen_categories(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The warning counted the objects without masks of every category, the left-out too."""
    results_file(data, tmp_path / "m.json", found=1, masks=True)
    val = json.loads((data / "coco/val.json").read_text(encoding="utf-8"))
    first = val["annotations"][0]["category_id"]
    maskless = [a for a in val["annotations"] if a["category_id"] == first][:2]
    for ann in maskless:
        del ann["segmentation"]
    (tmp_path / "some.json").write_text(json.dumps(val), encoding="utf-8")
    names = {c["id"]: c["name"] for c in val["categories"]}
    others = [n for i, n in names.items() if i != first]
    for classes, said in (([names[first]], f"{len(maskless)} objects without a usable mask"),
                          (others, None)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            scores = analyze_results.main([
                *args(data, tmp_path / "m.json", tmp_path / "m", "--iou-type", "segm",
                      "--topk", "0"), f"data.val.ann_file={tmp_path / 'some.json'}",
                "data.classes=[" + ",".join(classes) + "]"])
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                  and "without a usable mask" in r.getMessage()]
        if said is None:
            assert warned == []
        else:
            assert len(warned) == 1 and said in warned[0]
    with pytest.raises(ConfigError, match=r"data.classes must be null or a list of category "
                                          r"names .*got \[\]"):  # (an empty list read all)
        analyze_results.main([*args(data, tmp_path / "m.json", tmp_path / "m"), "data.classes=[]"])
        assert scores
