"""tools/train.py, tools/eval.py and tools/demo.py end to end on a tiny synthetic COCO set.

Runs in-process on CPU; tiny scenes (96x128), a ResNet-18 FPN with random weights, 2-3 steps.
"""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import logging
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.export_metadata import rewrite_export_metadata
from resnet_detect.detection import Predictor, evaluation
from resnet_detect.engine.checkpoint import CheckpointWriteError
from resnet_detect.engine.export import ExportError
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import DatasetError, UnreadableImageError
from resnet_detect.engine.data.synthetic import generate

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"


def load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / f"tools/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    generate(root, num_train=6, num_val=3, size=(96, 128), cls_train_per_class=1,
             cls_val_per_class=1)
    return root


def data_overrides(root: Path) -> list[str]:
    return [f"data.train.ann_file={root}/coco/train.json",
            f"data.train.img_dir={root}/images/train",
            f"data.val.ann_file={root}/coco/val.json", f"data.val.img_dir={root}/images/val",
            "data.train.min_size=96", "data.train.max_size=160", "data.val.min_size=96",
            "data.val.max_size=160", "data.num_workers=0", "model.backbone.weights=null",
            "train.batch_size=2", "train.log_period=1", "train.warmup_iters=1",
            "train.lr_steps=[1]"]


def train_args(root: Path, out: Path, max_iter: int, *extra: str) -> list[str]:
    return [str(CONFIG), *data_overrides(root), f"train.max_iter={max_iter}",
            f"train.output_dir={out}", *extra]


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    load_tool("train").main(train_args(data, out, 2, "train.checkpoint_period=1"))
    return out


@pytest.fixture(scope="module")
def exported(trained: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The float32 export of `trained` at score_thresh 0 (the tiles test's and the int8
    test's: one export, seconds, for both)."""
    folder = tmp_path_factory.mktemp("export") / "fp32"
    load_tool("export").main([str(CONFIG), *data_overrides(data),
                              "model.roi_heads.score_thresh=0.0", "--weights",
                              str(trained / "model_final.pth"), "--output", str(folder)])
    return folder


def test_train_writes_final_checkpoint_with_provenance(trained: Path, data: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    ckpt = torch.load(trained / "model_final.pth", map_location="cpu", weights_only=True)
    prov = ckpt["provenance"]
    assert ckpt["iteration"] == 2
    assert prov["class_names"] == ["circle", "square", "triangle", "star", "cross", "ellipse"]
    assert prov["category_ids"] == [1, 3, 5, 7, 9, 11]
    assert prov["config"]["model"]["num_classes"] == 6  # read from the training JSON
    assert prov["arch"] == "faster_rcnn_resnet18_fpn"
    assert ckpt["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 7
    assert (trained / "model_0000001.pth").is_file() and (trained / "config.yaml").is_file()
    # log.txt holds the whole run: the COCO table and the summary line, not only the console
    log = (trained / "log.txt").read_text()
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in log
    assert "box AP = " in log.splitlines()[-1]
    # a training checkpoint records the same: eval, demo and export read the dataset's ids;
    # and the data sets' sizes, which a --resume compares
    mid = torch.load(trained / "model_0000001.pth", map_location="cpu", weights_only=True)
    assert mid["provenance"] == {**prov, "train_images": 6, "val_images": 3}
    image = np.asarray(cv2.imread(str(data / "images/val/000000.jpg"))[..., ::-1])
    labels = Predictor(None, weights=trained / "model_0000001.pth",
                       overrides=["model.roi_heads.score_thresh=0.0"])(image)["labels"]
    assert len(labels) and set(labels.tolist()) <= {1, 3, 5, 7, 9, 11}  # were 1..6 before


def spy_on_coco_backends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The backend of every COCOeval run, in order."""
    used: list[str] = []
    run = evaluation._run_cocoeval

    def spy(coco_gt, coco_dt, iou_type, backend, *args):  # noqa: ANN001, ANN002, ANN202
        used.append(backend)
        return run(coco_gt, coco_dt, iou_type, backend, *args)

    monkeypatch.setattr(evaluation, "_run_cocoeval", spy)
    return used


def test_eval_takes_the_configs_device(trained: Path, data: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """tools/eval.py ran on "auto" whatever train.device said: train.device=cpu on a GPU
    machine evaluated on the GPU, and a device that is not there was not named."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"train.device=cuda but torch .* sees no GPU"):
        load_tool("eval").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                                "--output", str(tmp_path / "eval"), *data_overrides(data),
                                "train.device=cuda"])
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("backend", [None, "pycocotools", "faster_coco_eval"])
def test_eval_matches_pycocotools_on_written_results(trained: Path, data: Path, tmp_path: Path,
                                                     backend: str | None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "eval"
    used = spy_on_coco_backends(monkeypatch)
    choice = [f"data.val.coco_backend={backend}"] if backend else []
    load_tool("eval").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                            "--output", str(out), *data_overrides(data),
                            "model.roi_heads.score_thresh=0.0", *choice])
    assert used == [backend or "pycocotools"]
    written = json.loads((out / "metrics.json").read_text())
    metrics = written["bbox"]
    assert written["weights"] == str(trained / "model_final.pth")
    results = json.loads((out / "coco_instances_results.json").read_text())
    assert results, "score_thresh=0 must give detections"
    assert {r["category_id"] for r in results} <= {1, 3, 5, 7, 9, 11}
    gt = COCO(str(data / "coco/val.json"))
    ev = COCOeval(gt, gt.loadRes(results), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    for i, key in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        expected = ev.stats[i] * 100 if ev.stats[i] >= 0 else None
        if expected is None:
            assert metrics[key] is None
        else:
            assert metrics[key] == pytest.approx(expected, abs=1e-9)
    assert metrics["stats"] == pytest.approx(list(ev.stats), abs=1e-12)  # as training writes
    assert set(metrics["per_category"]) == {
        "circle", "square", "triangle", "star", "cross", "ellipse"}


def test_eval_keeps_out_of_a_training_runs_folder(trained: Path, data: Path) -> None:
    """--output of the run itself replaced the run's metrics.json."""
    before = (trained / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match=rf"--output {trained} is a training run's folder: its "
                                          rf"metrics.json would be replaced; .*--output "
                                          rf"{trained / 'eval'}"):
        load_tool("eval").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                                "--output", str(trained), *data_overrides(data)])
    assert (trained / "metrics.json").read_bytes() == before


def test_eval_of_a_val_split_without_a_readable_image_fails(trained: Path, data: Path,
                                                            tmp_path: Path) -> None:
    """Every val image unreadable gave AP 0 with exit 0 (every object counted as missed):
    now exit 2, and an earlier evaluation's files in the folder stay as they were."""
    args = [str(CONFIG), "--weights", str(trained / "model_final.pth"), "--output",
            str(tmp_path / "eval"), *data_overrides(data), "model.roi_heads.score_thresh=0.0"]
    load_tool("eval").main(args)
    earlier = {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir() if p.is_file()}
    assert {"metrics.json", "coco_instances_results.json"} <= set(earlier)
    assert json.loads(earlier["coco_instances_results.json"])  # detections, to be kept
    shutil.copytree(data / "images/val", tmp_path / "val")
    for image in (tmp_path / "val").iterdir():
        image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"^val: none of the 3 images could be read \(the "
                                           r"warnings above name them\): nothing was scored$"):
        load_tool("eval").main([*args, f"data.val.img_dir={tmp_path / 'val'}"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()
            if p.is_file()} == earlier


RESULTS = "coco_instances_results.json"


def test_data_classes_train_and_score_those_categories_alone(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """mmdetection's metainfo classes: a subset of a file's categories trained and scored
    without cutting the files (it was refused: 'no key')."""
    out = tmp_path / "run"
    result = load_tool("train").main(train_args(data, out, 1, "data.classes=[square,circle]"))
    assert list(result["metrics"]["per_category"]) == ["circle", "square"]
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert (ckpt["provenance"]["class_names"], ckpt["provenance"]["category_ids"]) == (
        ["circle", "square"], [1, 3])
    assert ckpt["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3
    scored = load_tool("eval").main([str(out / "config.yaml"), "--weights",
                                     str(out / "model_final.pth"), "--output",
                                     str(tmp_path / "eval")])
    assert list(scored["bbox"]["per_category"]) == ["circle", "square"]
    assert scored["bbox"]["stats"] == result["metrics"]["stats"]
    again = load_tool("eval").main([str(out / "config.yaml"), "--results",
                                    str(tmp_path / "eval" / RESULTS), "--output",
                                    str(tmp_path / "results")])
    assert again["bbox"] == scored["bbox"]
    # the confusion matrix over the chosen categories (the others' objects were "missed")
    load_tool("eval").main([str(out / "config.yaml"), "--results",
                            str(tmp_path / "eval" / RESULTS), "--output",
                            str(tmp_path / "confusion"), "--confusion-matrix"])
    table = "".join(p.read_text() for p in (tmp_path / "confusion").rglob("*.csv"))
    assert "circle" in table and "triangle" not in table
    # a chosen category without val objects: n/a, not "no annotations" (nor --results' crash)
    alone = load_tool("eval").main([str(out / "config.yaml"), "data.classes=[square]",
                                    "--weights", str(out / "model_final.pth"), "--output",
                                    str(tmp_path / "square")])
    assert alone["bbox"]["AP"] is None and list(alone["bbox"]["per_category"]) == ["square"]
    # (id 1 is in val.json: data.classes left it out)
    assert any(r.getMessage().startswith("1 of the model's category ids are not in the "
                                         "categories data.classes keeps of ") and
               r.getMessage().endswith("val.json: [1]") for r in caplog.records)
    again = load_tool("eval").main([str(out / "config.yaml"), "data.classes=[square]",
                                    "--results", str(tmp_path / "square" / RESULTS),
                                    "--output", str(tmp_path / "square_results")])
    assert again["bbox"]["AP"] is None
    # tools/demo.py and tools/export.py draw / export the weights' classes: another
    # data.classes given to them is said to be unused (they ignored it without a word)
    image = next((data / "images/val").iterdir())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_tool("demo").main([str(out / "config.yaml"), "--weights",
                                str(out / "model_final.pth"), "--input", str(image),
                                "--output", str(tmp_path / "demo")])
    assert "data.classes" not in caplog.text  # the run's own: nothing to say
    for tool, what, extra in (("demo", "draws", ["--input", str(image)]),
                              ("export", "exports", [])):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            load_tool(tool).main([str(out / "config.yaml"), "data.classes=[square]",
                                  "--weights", str(out / "model_final.pth"), *extra,
                                  "--output", str(tmp_path / f"{tool}_square")])
        assert (f"data.classes [square] is not used here: this tool {what} the weights' 2 "
                f"classes ['circle', 'square'] (data.classes chooses what a training learns "
                f"and tools/eval.py scores)") in caplog.text
    # a resume on other classes: refused naming data.classes (the class names alone before)
    with pytest.raises(ConfigError, match=r"this run's data gives \['circle', 'cross'\] "
                                          r"\(data.classes: \[square,circle\] -> "
                                          r"\[circle,cross\]\): its labels would mean"):
        load_tool("train").main(train_args(data, out, 2, "data.classes=[circle,cross]",
                                           "--resume"))
    with pytest.raises(ConfigError, match=r"data.classes must be null or a list"):
        load_tool("train").main(train_args(data, tmp_path / "p", 1, "data.classes=circle",
                                           "--print-config"))
    with pytest.raises(DatasetError, match=r"data.classes names \['sqare'\], not categories"):
        load_tool("train").main(train_args(data, tmp_path / "typo", 1, "data.classes=[sqare]"))
    with pytest.raises(ConfigError, match=r"data.classes must be null or a list of category "
                                          r"names \(each once\)"):
        load_tool("train").main(train_args(data, tmp_path / "twice", 1,
                                           "data.classes=[square,square]"))


def test_a_small_dataset_fine_tuning_is_told_its_rate_schedule_and_class_count(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A fine-tuning trial: the recipe's lr 0.02 (16 images) kept at batch 2 turned the loss
    NaN 13 steps in, without a word at the start; an epoch-based run's lr drop, warmup and
    evaluations were left to guess; torchvision's num_classes (background counted) was
    refused without saying why."""
    sgd = ["train.optimizer=sgd", "train.weight_decay=0.0001", "train.batch_size=2",
           "train.epochs=2", "train.max_iter=null", "train.warmup_iters=0",
           "train.lr_decay=step", "train.lr_steps=[]", "train.lr_step_epochs=[1]",
           "train.warmup_epochs=0.5",
           "train.amp=false"]
    with caplog.at_level(logging.INFO):
        load_tool("train").main(train_args(data, tmp_path / "high", 1, *sgd,
                                           "train.base_lr=0.02", "data.train.min_size=[192]"))
    assert ("train.base_lr 0.02 at train.batch_size 2 is 8x the recipes' rate per image "
            "(0.02 for 16 images); the linear scaling rule gives 0.0025 here") in caplog.text
    # COCO's 640..800 kept for small pictures: each enlarged, its compute with the square
    assert ("data.train.min_size=[192] enlarges the training images (a median short side of "
            "96 pixels) 2.0x or more") in caplog.text
    assert ("training for 6 iterations (3 per epoch): warmup 2 iterations; lr x0.1 at "
            "iteration 3; evaluated at the end (to evaluate every epoch: "
            "train.eval_period_epochs=1)") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_tool("train").main(train_args(data, tmp_path / "scaled", 1, *sgd,
                                           "train.base_lr=0.0025",
                                           "train.eval_period_epochs=1"))
    assert "linear scaling rule" not in caplog.text and "enlarges" not in caplog.text
    assert "lr x0.1 at iteration 3; evaluated every 3 iterations and at the end" in caplog.text
    with pytest.raises(ConfigError, match=r"model.num_classes is 7 but .*train.json has 6 "
                                          r"categories \(model.num_classes counts the objects' "
                                          r"classes, .*: 6 here; torchvision's num_classes "
                                          r"counts the background too\)"):
        load_tool("train").main(train_args(data, tmp_path / "seven", 1, "model.num_classes=7"))


def test_eval_keeps_out_of_another_evaluations_folder(trained: Path, data: Path,
                                                     tmp_path: Path) -> None:
    """An evaluation of other weights into one --output replaced its metrics.json and left
    the results files of both; the same weights again (an export folder or its model.onnx
    alike) replace their evaluation."""
    out = tmp_path / "eval"
    run = [str(CONFIG), "--output", str(out), *data_overrides(data)]
    load_tool("eval").main([*run, "--weights", str(trained / "model_final.pth")])
    before = (out / "metrics.json").read_bytes()
    other = trained / "model_0000000.pth"
    with pytest.raises(ConfigError, match=rf"--output {out} holds the evaluation of other "
                                          rf"weights \({trained / 'model_final.pth'}\): .*remove "
                                          rf"{out / 'metrics.json'}"):
        load_tool("eval").main([*run, "--weights", str(other)])
    assert (out / "metrics.json").read_bytes() == before
    again = load_tool("eval").main([*run, "--weights", str(trained / "model_final.pth")])
    assert again["weights"] == str(trained / "model_final.pth")
    # an older version's evaluation recorded no weights: it was replaced without a word
    (tmp_path / "old").mkdir()
    (tmp_path / "old/metrics.json").write_text('{"bbox": {"AP": 12.5}, "images": 3}')
    with pytest.raises(ConfigError, match=rf"--output {tmp_path / 'old'} holds a metrics.json "
                                          rf"that names no weights \(a training run's, or an "
                                          rf"older version's evaluation\)"):
        load_tool("eval").main([str(CONFIG), "--output", str(tmp_path / "old"),
                                *data_overrides(data), "--weights", str(other)])
    eval_tool = load_tool("eval")
    assert eval_tool.same_weights(str(tmp_path), str(tmp_path / "model.onnx"))
    assert not eval_tool.same_weights(str(other), str(trained / "model_final.pth"))


def test_eval_scores_a_results_file_as_it_scored_the_weights(trained: Path, data: Path,
                                                             tmp_path: Path) -> None:
    """--results scores a written results file without a model: the evaluation's own file
    gives its numbers, VOC's AP too where data.val.voc_metric asks (it was left out without a
    word); into a folder of another evaluation it is refused."""
    run = [str(CONFIG), *data_overrides(data), "model.roi_heads.score_thresh=0.0",
           "data.val.voc_metric=area"]
    by_weights = load_tool("eval").main([*run, "--weights", str(trained / "model_final.pth"),
                                         "--output", str(tmp_path / "weights")])
    results = tmp_path / "weights" / "coco_instances_results.json"
    scored = load_tool("eval").main([*run, "--results", str(results),
                                     "--output", str(tmp_path / "results")])
    assert scored["bbox"] == by_weights["bbox"] and by_weights["bbox"]["AP50"] is not None
    assert scored["voc"] == by_weights["voc"] and by_weights["voc"]["mode"] == "area"
    assert json.loads((tmp_path / "results/metrics.json").read_text()) == {
        "bbox": by_weights["bbox"], "voc": by_weights["voc"], "results": str(results)}
    # (it said "of other results (.../model_final.pth)")
    with pytest.raises(ConfigError, match=rf"holds the evaluation of weights "
                                          rf"\({trained / 'model_final.pth'}\)"):
        load_tool("eval").main([*run, "--results", str(results),
                                "--output", str(tmp_path / "weights")])


def test_results_beyond_what_the_coco_evaluation_scores_are_said(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file written with detections_per_image=300 was scored at 100 per image and category
    without a word (the evaluation of the weights that wrote it scored 300)."""
    val = json.loads((data / "coco/val.json").read_text())
    ann = val["annotations"][0]
    other = next(c for c in val["categories"] if c["id"] != ann["category_id"])
    path = tmp_path / "dense.json"

    def scored(categories: list[int], *overrides: str) -> str:
        path.write_text(json.dumps([{"image_id": ann["image_id"], "category_id": category,
                                     "bbox": ann["bbox"], "score": 0.5 - k / 1000}
                                    for k, category in enumerate(categories)]))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            load_tool("eval").main([str(CONFIG), *data_overrides(data), *overrides,
                                    "--results", str(path), "--output", str(tmp_path / "out")])
        return caplog.text

    warning = (f"{path}: 101 results of image {ann['image_id']} and category "
               f"{ann['category_id']}, and the COCO evaluation scores the 100 best of each "
               f"image and category (model.roi_heads.detections_per_image=101 scores them all")
    assert warning in scored([ann["category_id"]] * 101)
    assert warning not in scored([ann["category_id"]] * 101,
                                 "model.roi_heads.detections_per_image=101")
    # 100 of each category of an image are scored; results of categories not scored are not
    assert "the COCO evaluation scores the" not in scored(
        [ann["category_id"]] * 100 + [other["id"]] * 100)
    assert "the COCO evaluation scores the" not in scored(
        [ann["category_id"]] * 101 + [other["id"]], f"data.classes=[{other['name']}]")


def test_eval_scores_perfect_results_100_and_names_bad_results_files(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The val file's own objects as results (boxes and RLE masks, as detectron2 writes
    them) score 100 box and mask AP; results of a category the file lacks are named and
    not scored; a malformed file is named before anything is scored."""
    gt = COCO(str(data / "coco/val.json"))
    perfect = []
    for ann in gt.dataset["annotations"]:
        rle = gt.annToRLE(ann)
        perfect.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": ann["bbox"], "score": 0.9,
                        "segmentation": {"size": rle["size"],
                                         "counts": rle["counts"].decode("ascii")}})
    stray = {**perfect[0], "category_id": 99, "score": 0.99}
    path = tmp_path / "perfect.json"
    path.write_text(json.dumps([*perfect, stray]))
    run = [str(CONFIG), *data_overrides(data), "--output"]
    with caplog.at_level(logging.WARNING):
        scored = load_tool("eval").main([*run, str(tmp_path / "out"), "--results", str(path)])
    assert scored["bbox"]["AP"] == pytest.approx(100.0) and scored["bbox"]["AP50"] == 100.0
    assert scored["segm"]["AP"] == pytest.approx(100.0)
    assert "results, 1 have category ids [99] that " in caplog.text
    assert "reach beyond their image" not in caplog.text
    # boxes as [x1, y1, x2, y2]: scored near 0 without a word, before
    xyxy = [{**r, "bbox": [*r["bbox"][:2], r["bbox"][0] + r["bbox"][2],
                           r["bbox"][1] + r["bbox"][3]]} for r in perfect]
    path.write_text(json.dumps(xyxy))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_tool("eval").main([*run, str(tmp_path / "out"), "--results", str(path)])
    beyond = sum(x1 + x2 > 129 or y1 + y2 > 97 for x1, y1, x2, y2 in (r["bbox"] for r in xyxy))
    assert (f"{path}: {beyond} of {len(xyxy)} boxes reach beyond their image (x + width past "
            f"its width, or y + height past its height): are they [x1, y1, x2, y2]?"
            ) in caplog.text
    # the val file's polygons as written (other exporters'), and uncompressed RLEs
    uncompressed = []
    for ann in gt.dataset["annotations"]:
        mask = gt.annToMask(ann).flatten(order="F").astype(np.int64)  # COCO's column order
        bounds = np.r_[0, np.flatnonzero(np.diff(mask)) + 1, mask.size]
        counts = ([0] if mask[0] else []) + np.diff(bounds).tolist()  # runs from a 0-run
        uncompressed.append({"size": [gt.imgs[ann["image_id"]]["height"],
                                      gt.imgs[ann["image_id"]]["width"]], "counts": counts})
    for masks in ([a["segmentation"] for a in gt.dataset["annotations"]], uncompressed):
        path.write_text(json.dumps([{**r, "segmentation": m} for r, m in zip(perfect, masks)]))
        scored = load_tool("eval").main([*run, str(tmp_path / "out"), "--results", str(path)])
        assert scored["segm"]["AP"] == pytest.approx(100.0)
    # one result without its mask: box AP alone, said
    path.write_text(json.dumps([*perfect[:-1], {k: v for k, v in perfect[-1].items()
                                                if k != "segmentation"}]))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        scored = load_tool("eval").main([*run, str(tmp_path / "out"), "--results", str(path)])
    assert "segm" not in scored and scored["bbox"]["AP"] == pytest.approx(100.0)
    assert f"1 of {len(perfect)} results have no segmentation: mask AP is not scored" \
        in caplog.text
    for content, expected in (
            ({"images": [], "annotations": []}, "is a COCO annotation file; a results file is "
                                                "a list of detections"),
            ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}], "result 0 has no score"),
            ([perfect[0], {**perfect[0], "bbox": [1, 2, 3]}],
             r"result 1: bbox must be \[x, y, width, height\], .* got \[1, 2, 3\]"),
            ([{**perfect[0], "image_id": 12345}], r"1 image ids of the results are not in "),
            # NaN passes pycocotools' IoU test: one NaN box scored AP 100
            ([{**perfect[0], "bbox": [float("nan"), 2, 3, 4]}], r"result 0: bbox must be "
                                                                r"\[x, y, width, height\], finite"),
            ([{**perfect[0], "segmentation": "a mask"}], "result 0: segmentation must be "
                                                         "polygons or an RLE"),
            ([{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0, 0, 5, 5]},
              {"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": []}],
             r"a bbox each \(result 1 has none\) or a segmentation each \(result 0 has none\)")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content))
        with pytest.raises(DatasetError, match=rf"{bad}.*{expected}"):
            load_tool("eval").main([*run, str(tmp_path / "bad"), "--results", str(bad)])
        assert not (tmp_path / "bad/metrics.json").exists()
    with pytest.raises(FileNotFoundError, match="results file not found"):
        load_tool("eval").main([*run, str(tmp_path / "bad"), "--results", str(tmp_path / "no")])
    # a problem of the val file is its own, not the results file's (that was named first)
    lvis = {**gt.dataset, "images": [{**img, "neg_category_ids": [],
                                      "not_exhaustive_category_ids": []}
                                     for img in gt.dataset["images"]],
            "categories": [{**c, "frequency": "x"} for c in gt.dataset["categories"]]}
    (tmp_path / "lvis_val.json").write_text(json.dumps(lvis))
    path.write_text(json.dumps(perfect))
    with pytest.raises(DatasetError) as refused:
        load_tool("eval").main([*run, str(tmp_path / "bad"), "--results", str(path),
                                f"data.val.ann_file={tmp_path / 'lvis_val.json'}"])
    assert str(refused.value).startswith(f"{tmp_path / 'lvis_val.json'}: category id ")
    assert "frequency must be 'r', 'c' or 'f'" in str(refused.value)
    seg = ROOT / "configs/synthetic/deeplabv3_R_18_os16.yaml"
    with pytest.raises(ConfigError, match="--results scores COCO detection results; .* is a "
                                          "'sem_seg' config: give --weights"):
        load_tool("eval").main([str(seg), "--output", str(tmp_path / "s"), "--results",
                                str(path)])


def perfect_results(gt: dict, path: Path) -> Path:
    """The file's own objects (crowd regions left out) as a results file."""
    path.write_text(json.dumps([
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
         "score": 0.9} for a in gt["annotations"] if not a.get("iscrowd", 0)]), encoding="utf-8")
    return path


def masks_only_results(data: Path, path: Path) -> Path:
    """The val file's objects as results of masks without boxes."""
    gt_coco = COCO(str(data / "coco/val.json"))
    path.write_text(json.dumps([
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
         "segmentation": {"size": (r := gt_coco.annToRLE(a))["size"],
                          "counts": r["counts"].decode("ascii")}}
        for a in gt_coco.dataset["annotations"]]), encoding="utf-8")
    return path


def test_eval_writes_a_confusion_matrix_of_results_or_weights(
        trained: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--confusion-matrix (mmdetection's confusion_matrix.py): the val file's own objects as
    results leave nothing missed and nothing in the background, every object in its own
    class's column; an evaluation of weights writes the matrix of its results file."""
    import csv

    from resnet_detect.engine.data import read_coco_json
    gt = read_coco_json(data / "coco/val.json")
    path = perfect_results(gt, tmp_path / "perfect.json")
    run = [str(CONFIG), *data_overrides(data)]
    load_tool("eval").main([*run, "--output", str(tmp_path / "out"), "--results", str(path),
                            "--confusion-matrix"])
    rows = list(csv.reader((tmp_path / "out/confusion_matrix.csv").open()))
    names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    assert rows[0][1:] == [*names, "background"] and rows[-1][0] == "background"
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    per_class = [sum(a["category_id"] == c["id"] and not a.get("iscrowd", 0)
                     for a in gt["annotations"])
                 for c in sorted(gt["categories"], key=lambda c: c["id"])]
    assert counts[-1].sum() == 0 and counts[:, -1].sum() == 0  # nothing missed nor extra
    assert (np.diag(counts)[:-1] >= per_class).all()  # (touching objects add to a cell)
    assert "confusion matrix (detections scoring 0.3 or more, IoU 0.5)" in capsys.readouterr().out
    load_tool("eval").main([*run, "--output", str(tmp_path / "out"), "--results", str(path)])
    assert not (tmp_path / "out/confusion_matrix.csv").exists()  # (not of this evaluation)
    assert "removed the earlier evaluation's confusion_matrix.csv, confusion_matrix.png from " \
           f"{tmp_path / 'out'}: this evaluation did not make them" in capsys.readouterr().out
    load_tool("eval").main([*run, "--output", str(tmp_path / "w"), "--weights",
                            str(trained / "model_final.pth"), "--confusion-matrix",
                            "--score-thr", "0.5"])
    assert (tmp_path / "w/confusion_matrix.png").is_file()
    classifier = ROOT / "configs/pretrain/synthetic_resnet18.yaml"
    with pytest.raises(ConfigError, match="--confusion-matrix is for detection and sem_seg; "
                                          ".* is a 'classification' config"):
        load_tool("eval").main([str(classifier), "--output", str(tmp_path / "s"), "--weights",
                                "w.pth", "--confusion-matrix"])
    masks_only = masks_only_results(data, tmp_path / "masks.json")  # no matrix, said
    capsys.readouterr()
    load_tool("eval").main([*run, "--output", str(tmp_path / "m"), "--results",
                            str(masks_only), "--confusion-matrix"])
    assert "results have no bbox (it sets boxes against the objects'): no matrix" in \
        capsys.readouterr().out and not (tmp_path / "m/confusion_matrix.csv").exists()
    # asked for and not made (the results file written again, masks alone): the earlier
    # matrix stayed beside the new metrics
    load_tool("eval").main([*run, "--output", str(tmp_path / "out"), "--results", str(path),
                            "--confusion-matrix"])
    shutil.copyfile(masks_only, path)
    capsys.readouterr()
    load_tool("eval").main([*run, "--output", str(tmp_path / "out"), "--results", str(path),
                            "--confusion-matrix"])
    assert "removed the earlier evaluation's confusion_matrix.csv, confusion_matrix.png" in \
        capsys.readouterr().out and not (tmp_path / "out/confusion_matrix.csv").exists()
    # files of those names in a folder without an earlier evaluation are the user's
    mine = tmp_path / "mine"
    (mine / "error_analysis").mkdir(parents=True)
    (mine / "error_analysis/notes.txt").write_text("mine")
    (mine / "confusion_matrix.csv").write_text("a,b")
    load_tool("eval").main([*run, "--output", str(mine), "--results", str(masks_only)])
    assert (mine / "error_analysis/notes.txt").read_text() == "mine"
    assert (mine / "confusion_matrix.csv").read_text() == "a,b"
    with pytest.raises(ConfigError, match="--score-thr is a score, 0..1, got 30"):
        load_tool("eval").main([*run, "--output", str(tmp_path / "s"), "--results", str(path),
                                "--confusion-matrix", "--score-thr", "30"])
    # (without the matrix it was taken and ignored: read as the AP's threshold, say)
    for flags in ([], ["--error-analysis"]):
        with pytest.raises(ConfigError, match="^--score-thr sets which detections a detection "
                                              "--confusion-matrix counts, and this evaluation "
                                              "makes none: the AP and the other metrics score "
                                              "every detection"):
            load_tool("eval").main([*run, "--output", str(tmp_path / "s"), "--results",
                                    str(path), *flags, "--score-thr", "0.2"])


@pytest.mark.slow
def test_results_scored_under_torchrun_by_one_process(data: Path, tmp_path: Path) -> None:
    """--results under torchrun: every process took itself for the main one (no process
    group): the second was refused the --output the first had locked, and the run failed."""
    import os
    import subprocess

    from resnet_detect.engine.data import read_coco_json
    from tests.torchrun import _free_port
    path = perfect_results(read_coco_json(data / "coco/val.json"), tmp_path / "p.json")
    log = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
         str(ROOT / "tools/eval.py"), str(CONFIG), *data_overrides(data), "--results",
         str(path), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert log.returncode == 0, log.stdout[-3000:] + log.stderr[-3000:]
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["bbox"]["AP"] == 100.0 and metrics["results"] == str(path)
    assert log.stdout.count("box AP = ") == 1  # (scored and printed once)


@pytest.mark.slow
def test_demo_under_torchrun_draws_each_input_once(trained: Path, data: Path,
                                                   tmp_path: Path) -> None:
    """Each process drew every input: N times the work, each file written N times, and N
    "wrote" lines. Now each draws its share, and the files are a single process's."""
    import os
    import subprocess

    from tests.torchrun import _free_port
    demo = [str(ROOT / "tools/demo.py"), str(CONFIG), *data_overrides(data), "--weights",
            str(trained / "model_final.pth"), "--input", str(data / "images/val"),
            "--save-json", "--min-score", "0.0"]
    log = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *demo,
         "--output", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert log.returncode == 0, log.stdout[-3000:] + log.stderr[-3000:]
    assert log.stdout.count("wrote ") == 1 and "wrote 3 picture(s) and their JSON" in log.stdout
    load_tool("demo").main([*demo[1:], "--output", str(tmp_path / "one")])
    for one in sorted((tmp_path / "one").glob("*.json")):
        assert json.loads((tmp_path / "two" / one.name).read_text()) == json.loads(
            one.read_text())
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


def test_the_error_analysis_counts_the_detections_the_scoring_counts(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A scene of 120 objects of one class, each found: with detections_per_image 150 the
    scoring counts 150 per image and class (AP50 100), and so does the error analysis (its
    C50 was COCO's 100 detections' 100/120 recall)."""
    boxes = [[10.0 + 20 * (i % 12), 10.0 + 20 * (i // 12), 12.0, 12.0] for i in range(120)]
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 300, "width": 300}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b,
                           "area": 144.0, "iscrowd": 0} for i, b in enumerate(boxes)],
          "categories": [{"id": 1, "name": "dot"}]}
    (tmp_path / "val.json").write_text(json.dumps(gt), encoding="utf-8")
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 0.9 - i / 1000}
               for i, b in enumerate(boxes)]
    (tmp_path / "r.json").write_text(json.dumps(results), encoding="utf-8")
    metrics = load_tool("eval").main([
        str(CONFIG), f"data.val.ann_file={tmp_path / 'val.json'}", f"data.val.img_dir={tmp_path}",
        "model.roi_heads.detections_per_image=150", "--results", str(tmp_path / "r.json"),
        "--output", str(tmp_path / "out"), "--error-analysis"])
    numbers = json.loads((tmp_path / "out/error_analysis/bbox/error_analysis.json").read_text())
    assert metrics["bbox"]["AP50"] == pytest.approx(100.0)
    assert numbers["overall"]["all"]["C50"] == pytest.approx(1.0)
    assert "box error analysis (AP of each curve, overall; " in capsys.readouterr().out
    # an LVIS file is analysed by COCO's rules: said (its C50 would not be the AP50 printed)
    gt["images"][0].update(neg_category_ids=[], not_exhaustive_category_ids=[])
    gt["categories"][0]["frequency"] = "f"
    (tmp_path / "val.json").write_text(json.dumps(gt), encoding="utf-8")
    load_tool("eval").main([
        str(CONFIG), f"data.val.ann_file={tmp_path / 'val.json'}", f"data.val.img_dir={tmp_path}",
        "model.roi_heads.detections_per_image=150", "--results", str(tmp_path / "r.json"),
        "--output", str(tmp_path / "lvis"), "--error-analysis"])
    assert ("box error analysis (AP of each curve, overall by COCO's rules, not LVIS's: C75 and "
            "C50 are not the LVIS AP75 and AP50; ") in capsys.readouterr().out
    # no result: the boxes' analysis alone (a mask analysis of dashes was written too: every
    # result of none "has a mask")
    (tmp_path / "none.json").write_text("[]", encoding="utf-8")
    load_tool("eval").main([
        str(CONFIG), f"data.val.ann_file={tmp_path / 'val.json'}", f"data.val.img_dir={tmp_path}",
        "--results", str(tmp_path / "none.json"), "--output", str(tmp_path / "none"),
        "--error-analysis"])
    said = capsys.readouterr().out
    assert "box error analysis" in said and "mask error analysis" not in said
    assert sorted(p.name for p in (tmp_path / "none/error_analysis").iterdir()) == ["bbox"]


def test_eval_writes_an_error_analysis_of_results_or_weights(
        trained: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--error-analysis (mmdetection's coco_error_analysis.py): the val file's own objects as
    results score 1 on every curve; an evaluation of weights analyses its results file."""
    from resnet_detect.engine.data import read_coco_json
    gt = read_coco_json(data / "coco/val.json")
    path = perfect_results(gt, tmp_path / "perfect.json")
    run = [str(CONFIG), *data_overrides(data)]
    load_tool("eval").main([*run, "--output", str(tmp_path / "out"), "--results", str(path),
                            "--error-analysis"])
    folder = tmp_path / "out/error_analysis/bbox"
    numbers = json.loads((folder / "error_analysis.json").read_text())
    assert numbers["overall"]["all"] == pytest.approx(dict.fromkeys(
        ["C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"], 1.0))
    assert (folder / "overall-all.png").is_file() and (folder / "categories/1-circle-all.png"
                                                       ).is_file()
    out = capsys.readouterr().out
    assert "box error analysis" in out and re.search(r"\nall +1\.000 +1\.000", out)
    load_tool("eval").main([*run, "--output", str(tmp_path / "w"), "--weights",
                            str(trained / "model_final.pth"), "--error-analysis"])
    numbers = json.loads((tmp_path / "w/error_analysis/bbox/error_analysis.json").read_text())
    assert numbers["overall"]["all"]["FN"] == 1.0
    seg = ROOT / "configs/synthetic/deeplabv3_R_18_os16.yaml"
    with pytest.raises(ConfigError, match="--error-analysis is for detection; .* is a "
                                          "'sem_seg' config"):
        load_tool("eval").main([str(seg), "--output", str(tmp_path / "s"), "--weights", "w.pth",
                                "--error-analysis"])
    # results of masks (the val file's own): their masks analysed (mmdetection's --types segm)
    masks_only = masks_only_results(data, tmp_path / "masks.json")
    capsys.readouterr()
    load_tool("eval").main([*run, "--output", str(tmp_path / "m"), "--results",
                            str(masks_only), "--error-analysis"])
    assert "mask error analysis" in capsys.readouterr().out
    numbers = json.loads((tmp_path / "m/error_analysis/segm/error_analysis.json").read_text())
    assert numbers["iou_type"] == "segm" and numbers["overall"]["all"] == pytest.approx(
        dict.fromkeys(["C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"], 1.0))
    assert not (tmp_path / "m/error_analysis/bbox").exists()
    # the results file written again with boxes alone: the masks' analysis went on lying
    # beside the new one (a part of error_analysis/ was written again, so all was kept)
    segm_files = len(list((tmp_path / "m/error_analysis/segm").rglob("*.*")))
    shutil.copyfile(path, masks_only)
    load_tool("eval").main([*run, "--output", str(tmp_path / "m"), "--results",
                            str(masks_only), "--error-analysis"])
    assert f"removed the earlier evaluation's {segm_files} files of error_analysis from " \
           f"{tmp_path / 'm'}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "m/error_analysis").iterdir()) == ["bbox"]
    unlabelled = tmp_path / "test-dev.json"  # a val file without annotations: said
    unlabelled.write_text(json.dumps({k: v for k, v in gt.items() if k != "annotations"}))
    load_tool("eval").main([*run, f"data.val.ann_file={unlabelled}", "--output",
                            str(tmp_path / "u"), "--weights", str(trained / "model_final.pth"),
                            "--error-analysis"])
    assert f"--error-analysis: {unlabelled} has no annotations: no analysis" in \
        capsys.readouterr().out and not (tmp_path / "u/error_analysis").exists()


@pytest.mark.parametrize("what", ["views", "tiles"])
def test_eval_with_views_or_tiles_scores_what_the_predictor_gives(
        what: str, trained: Path, data: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    """The views (test-time augmentation) are made, and the tiles cut, from each image at its
    own size, not from the test-size image."""
    aug = ["model.roi_heads.score_thresh=0.0", *{
        "views": ["test.min_sizes=[80,112]", "test.flip=true", "data.val.min_size=64"],
        # the scenes are 96 x 128: 2 x 2 tiles and the whole image
        "tiles": ["test.tiles.size=[64,80]", "test.tiles.overlap=0.2"]}[what]]
    weights = trained / "model_final.pth"
    load_tool("eval").main([str(CONFIG), "--weights", str(weights), "--output",
                            str(tmp_path / "eval"), *data_overrides(data), *aug])
    results = json.loads((tmp_path / "eval/coco_instances_results.json").read_text())
    predictor = Predictor(CONFIG, weights=weights, overrides=[*data_overrides(data), *aug])
    for info in json.loads((data / "coco/val.json").read_text())["images"]:
        image = np.ascontiguousarray(cv2.imread(str(data / "images/val" / info["file_name"]))
                                     [..., ::-1])
        expected = predictor(image)
        written = [r for r in results if r["image_id"] == info["id"]]
        assert len(written) == len(expected["boxes"]) > 0
        boxes = np.array([r["bbox"] for r in written])
        boxes[:, 2:] += boxes[:, :2]
        np.testing.assert_allclose(boxes, expected["boxes"], atol=1e-2)
        np.testing.assert_allclose([r["score"] for r in written], expected["scores"], atol=1e-5)
        assert [r["category_id"] for r in written] == expected["labels"].tolist()
    plain = Predictor(CONFIG, weights=weights, overrides=[*data_overrides(data), aug[0]])
    assert not np.allclose(plain(image)["scores"], expected["scores"])  # they did something
    # demo says so too, as eval does (a pass per tile or view: it said nothing)
    with caplog.at_level(logging.INFO):
        load_tool("demo").main([str(CONFIG), "--weights", str(weights), "--input",
                                str(data / "images/val" / info["file_name"]), "--output",
                                str(tmp_path / "demo"), *data_overrides(data), *aug])
    said = {"views": "test-time augmentation: ", "tiles": "sliced inference: tiles of 64x80 px"}
    assert sum(said[what] in r.getMessage() for r in caplog.records) == 2  # eval's, demo's
    if what == "tiles":  # an exported graph takes them: the same detections
        onnx = request.getfixturevalue("exported")  # (the weights' export, aug[0]'s threshold)
        load_tool("eval").main([str(CONFIG), "--weights", str(onnx / "model.onnx"),
                                "--output", str(tmp_path / "graph"), *data_overrides(data),
                                *aug])
        graph = json.loads((tmp_path / "graph/coco_instances_results.json").read_text())
        assert len(graph) == len(results)
        np.testing.assert_allclose([r["bbox"] for r in graph], [r["bbox"] for r in results],
                                   atol=1e-2)
        assert [r["category_id"] for r in graph] == [r["category_id"] for r in results]


def test_eval_with_test_compile_scores_as_eager(trained: Path, data: Path,
                                               tmp_path: Path) -> None:
    """test.compile (aot_eager here: inductor compiles for minutes on these CPUs) gives
    tools/eval.py the eager model's detections; a bad value is named before any output."""
    args = [str(CONFIG), "--weights", str(trained / "model_final.pth"), *data_overrides(data),
            "model.roi_heads.score_thresh=0.0"]
    eager = load_tool("eval").main([*args, "--output", str(tmp_path / "eager")])
    compiled = load_tool("eval").main([*args, "--output", str(tmp_path / "compiled"),
                                       "test.compile=aot_eager"])
    assert compiled["bbox"]["stats"] == pytest.approx(eager["bbox"]["stats"], abs=1e-9)
    assert eager["bbox"]["AP"] > 0
    with pytest.raises(ConfigError, match=r"test.compile must be false, true or a "
                                          r"torch.compile backend .*got 'fast'"):
        load_tool("eval").main([*args, "--output", str(tmp_path / "bad"), "test.compile=fast"])
    assert not (tmp_path / "bad").exists()


def test_a_file_without_annotations_gets_its_detections_written_and_nothing_scored(
        trained: Path, data: Path, tmp_path: Path) -> None:
    """COCO's test-dev image info: images and categories, no annotations key."""
    info = json.loads((data / "coco/val.json").read_text())
    del info["annotations"]
    (tmp_path / "test_dev.json").write_text(json.dumps(info))
    args = [str(CONFIG), "--weights", str(trained / "model_final.pth"), *data_overrides(data),
            "model.roi_heads.score_thresh=0.0"]
    load_tool("eval").main([*args, "--output", str(tmp_path / "val")])
    written = load_tool("eval").main([*args, "--output", str(tmp_path / "test"),
                                      f"data.val.ann_file={tmp_path / 'test_dev.json'}"])
    assert written["bbox"] is None and written["images"]["images"] == len(info["images"])
    assert json.loads((tmp_path / "test/metrics.json").read_text())["bbox"] is None
    detections = [json.loads((tmp_path / f"{name}/coco_instances_results.json").read_text())
                  for name in ("val", "test")]
    assert detections[1] == detections[0] and len(detections[0]) > 0
    # a training cannot score its evaluations against such a file: refused before it trains
    with pytest.raises(DatasetError, match="test_dev.json has no annotations to score"):
        load_tool("train").main(train_args(data, tmp_path / "run", 1,
                                           f"data.val.ann_file={tmp_path / 'test_dev.json'}"))
    assert not list((tmp_path / "run").glob("*.pth"))


def test_eval_names_objects_of_classes_the_weights_never_learnt(
        trained: Path, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A category added to the val file, with objects: scored AP 0 without a word."""
    content = json.loads((data / "coco/val.json").read_text())
    content["categories"].append({"id": 13, "name": "hexagon", "supercategory": "shape"})
    moved = [a for a in content["annotations"] if a["category_id"] == 11][:5]
    for annotation in moved:
        annotation["category_id"] = 13
    (tmp_path / "extra.json").write_text(json.dumps(content))
    with caplog.at_level("WARNING"):
        load_tool("eval").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                                "--output", str(tmp_path / "eval"), *data_overrides(data),
                                f"data.val.ann_file={tmp_path / 'extra.json'}"])
    assert moved and not any(a.get("iscrowd") for a in moved)
    assert (f"{tmp_path / 'extra.json'} has objects of 1 categories the weights "
            f"{trained / 'model_final.pth'} were not trained on (hexagon (id 13): {len(moved)} "
            f"objects): each scores AP 0") in caplog.text


def test_eval_refuses_weights_whose_classes_the_file_names_otherwise(
        trained: Path, data: Path, tmp_path: Path) -> None:
    def evaluate_on_a_copy(name: str, edit: Callable[[dict], None]) -> None:
        """tools/eval.py of the trained weights on the val file as `edit` changes it."""
        content = json.loads((data / "coco/val.json").read_text())
        edit(content)
        (tmp_path / name).write_text(json.dumps(content))
        load_tool("eval").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                                "--output", str(tmp_path / "eval"), *data_overrides(data),
                                f"data.val.ann_file={tmp_path / name}"])

    def renamed(content: dict) -> None:
        names = [c["name"] for c in content["categories"]]
        for category, name in zip(content["categories"], names[1:] + names[:1]):
            category["name"] = name  # the same ids, each named as the next

    with pytest.raises(ValueError, match=r"model_final.pth names the categories \[\(1, 'circle'\)"
                                         r".*renamed.json \[\(1, 'square'\)"):
        evaluate_on_a_copy("renamed.json", renamed)
    assert not (tmp_path / "eval/metrics.json").exists()

    def renumbered(content: dict) -> None:
        content["categories"][-1]["id"] = 13  # ellipse: 11 in training
        for ann in content["annotations"]:
            ann["category_id"] = 13 if ann["category_id"] == 11 else ann["category_id"]

    # a re-export that renumbered a class: its detections were scored as missing (AP 0)
    with pytest.raises(ValueError, match=r"has the categories \[\(11, 'ellipse'\)\], .*"
                                         r"renumbered.json the same names under other ids "
                                         r"\[\(13, 'ellipse'\)\]"):
        evaluate_on_a_copy("renumbered.json", renumbered)

    def other_dataset(content: dict) -> None:
        for category in content["categories"]:
            category["id"], category["name"] = category["id"] + 100, f"other_{category['name']}"
        for ann in content["annotations"]:
            ann["category_id"] += 100

    # another dataset's file (no id, no name in common): a ValueError traceback, no message
    with pytest.raises(DatasetError, match=r"none of the category ids of .*model_final.pth "
                                           r"\[1, 3, 5, 7, 9, 11\] occur in .*other.json \(ids "
                                           r"\[101, 103, 105, 107, 109, 111\]\)"):
        evaluate_on_a_copy("other.json", other_dataset)
    assert not (tmp_path / "eval/metrics.json").exists()


def test_eval_zero_detections_gives_ap_zero(trained: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    with pytest.warns(RuntimeWarning, match="no detections"):
        load_tool("eval").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                                "--output", str(out), *data_overrides(data),
                                "model.roi_heads.score_thresh=1.0"])
    written = json.loads((out / "metrics.json").read_text())
    assert written["bbox"]["AP"] == 0.0 and json.loads((out / "coco_instances_results.json")
                                                       .read_text()) == []
    val_images = len(json.loads((data / "coco/val.json").read_text())["images"])
    assert written["images"] == {"images": val_images, "unreadable": 0}


def test_resume_refuses_model_settings_the_weights_cannot_follow_and_names_the_others(
        trained: Path, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """New anchors (or strides, normalisation) were taken silently: the checkpoint's weights
    then computed something else. Model keys that change no weight (test thresholds) apply,
    named."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    tool = load_tool("train")
    with pytest.raises(ConfigError, match=r"checkpoint .*model_0000002.pth do not fit this "
                                          r"config: model.anchor_generator.sizes is "
                                          r"\[\[16\],\[32\],\[64\],\[128\]\], the weights need "
                                          r"\[\[20\],\[40\],\[80\],\[160\]\]"):
        tool.main(train_args(data, out, 3, "model.anchor_generator.sizes=[[16],[32],[64],[128]]",
                             "--resume"))
    with caplog.at_level(logging.WARNING):  # stride_in_1x1: nothing in basic blocks
        result = tool.main(train_args(data, out, 3, "model.roi_heads.score_thresh=0.3",
                                      "model.backbone.stride_in_1x1=true", "--resume"))
    assert result["iteration"] == 3
    assert ("with model settings other than the run that wrote it (they apply from here on): "
            "model.backbone.stride_in_1x1: False -> True, model.roi_heads.score_thresh: 0.05 "
            "-> 0.3") in caplog.text


def test_resume_without_checkpoints_keeps_a_finished_runs_results(
        trained: Path, data: Path, tmp_path: Path) -> None:
    """Its checkpoints removed to save space, a finished run resubmitted with --resume
    trained from scratch and replaced model_final.pth."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    for path in [*out.glob("model_0*.pth*"), out / "last_checkpoint"]:
        path.unlink()
    final = (out / "model_final.pth").read_bytes()
    with pytest.raises(ConfigError, match=r"--resume: .*run holds model_final.pth, metrics.json "
                                          r"of a finished run but no checkpoint to resume from"):
        load_tool("train").main(train_args(data, out, 2, "--resume"))
    assert (out / "model_final.pth").read_bytes() == final


def test_a_resumed_run_without_a_val_split_says_its_metrics_json_is_of_other_weights(
        trained: Path, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Resumed for more steps with the evaluation off, a run kept the metrics.json of its
    earlier weights beside new final weights, without a word."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = (out / "metrics.json").read_bytes()
    with caplog.at_level(logging.WARNING):
        load_tool("train").main(train_args(data, out, 3, "data.val.ann_file=null",
                                           "data.val.img_dir=null", "--resume"))
    assert (out / "metrics.json").read_bytes() == before
    assert f"{out / 'metrics.json'} is an earlier evaluation's, of other weights" in caplog.text


def test_a_full_disk_at_the_final_weights_says_so_and_resume_writes_them(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    tool = load_tool("train")

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("resnet_detect.backbones.save_checkpoint", full_disk)
        with pytest.raises(CheckpointWriteError, match=rf"cannot write the final weights in "
                                                       rf"{out} \(OSError: .*No space left on "
                                                       rf"device\); the checkpoint of iteration "
                                                       rf"2 is intact: free space there and "
                                                       rf".*--resume"):
            tool.main(train_args(data, out, 2))
    with monkeypatch.context() as m:  # a read-only file system: no space to free
        m.setattr("resnet_detect.backbones.save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(
            OSError(errno.EROFS, "Read-only file system")))
        with pytest.raises(CheckpointWriteError, match="is intact: make it writable and"):
            tool.main(train_args(data, out, 2, "--resume"))
    assert not (out / "model_final.pth").exists() and (out / "model_0000002.pth").is_file()
    assert tool.main(train_args(data, out, 2, "--resume"))["iteration"] == 2
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 2
    assert json.loads((out / "metrics.json").read_text())["bbox"]["AP"] is not None


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    tool = load_tool("train")
    tool.main(train_args(data, out, 1, "data.val.ann_file=null", "data.val.img_dir=null"))
    (out / "model_final.pth").unlink()
    result = tool.main(train_args(data, out, 3, "data.val.ann_file=null",
                                  "data.val.img_dir=null", "--resume"))
    assert result["iteration"] == 3
    assert (out / "model_0000003.pth").is_file()
    state = torch.load(out / "model_0000003.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 3 and state["scheduler"]["last_epoch"] == 3
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 3


def test_demo_writes_pictures_for_images_and_video(trained: Path, data: Path,
                                                   tmp_path: Path, capsys) -> None:
    import cv2
    import numpy as np
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    for f in sorted((data / "images/val").iterdir()):
        writer.write(cv2.imread(str(f)))
    writer.release()
    out = tmp_path / "demo"
    written = load_tool("demo").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                                      "--input", str(data / "images/val"), str(video),
                                      "--output", str(out), "--min-score", "0",
                                      "model.roi_heads.score_thresh=0.0"])
    names = sorted(p.name for p in written)
    assert names == ["000000.jpg", "000001.jpg", "000002.jpg", "clip.mp4"]
    picture = cv2.imread(str(out / "000000.jpg"))
    original = cv2.imread(str(data / "images/val/000000.jpg"))
    assert picture.shape == original.shape
    assert np.abs(picture.astype(int) - original.astype(int)).max() > 100  # boxes drawn
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    said = capsys.readouterr().out  # (it said "wrote 4 file(s)")
    drawn = int(said.split(f"wrote 3 picture(s) and 1 video(s) to {out}: ")[1].split()[0])
    assert drawn > 0
    # none scoring that high (the 2-step model's scores are low): said, with the way out
    load_tool("demo").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                            "--input", str(data / "images/val"), "--output",
                            str(tmp_path / "none"), "--min-score", "1.0"])
    assert (f"wrote 3 picture(s) to {tmp_path / 'none'}: 0 detections of score 1.0 or more (a "
            "lower --min-score shows weaker ones)") in capsys.readouterr().out
    # nothing read at all: no hint about the score (the inputs are listed as unreadable)
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    with pytest.raises(UnreadableImageError):
        load_tool("demo").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                                "--input", str(tmp_path / "broken.jpg"), "--output",
                                str(tmp_path / "nothing"), "--min-score", "1.0"])
    assert (f"wrote 0 picture(s) to {tmp_path / 'nothing'}: 0 detections of score 1.0 or more\n"
            in capsys.readouterr().out)


def write_video(frames: list[Path], video: Path) -> list[np.ndarray]:
    """An MJPG .avi of the images; returns its frames as read back (RGB)."""
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    capture, read = cv2.VideoCapture(str(video)), []
    while (frame := capture.read())[0]:
        read.append(np.ascontiguousarray(frame[1][..., ::-1]))
    capture.release()
    return read


def read_rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])


def assert_json_holds(record: dict, expected: dict, min_score: float = 0.0) -> None:
    """The demo's JSON `record` holds the Predictor's detections `expected` of `min_score`
    or more."""
    kept = expected["scores"] >= min_score
    assert 0 < kept.sum() and record["scores"], "no detections to compare"
    np.testing.assert_allclose(record["boxes"], expected["boxes"][kept], rtol=1e-6)
    np.testing.assert_allclose(record["scores"], expected["scores"][kept], rtol=1e-6)
    assert record["category_ids"] == expected["labels"][kept].tolist()
    # ("labels" held the names, the Predictor's "labels" the ids)
    assert "labels" not in record
    assert record["class_names"] == [n for n, k in zip(expected["class_names"], kept) if k]


def test_demo_saves_the_detections_it_draws_as_json(
        trained: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--save-json: DIR/<name>.json per image, DIR/<name>.jsonl per video, holding what the
    Predictor returns for the image (the detections of --min-score or more)."""
    images = sorted((data / "images/val").iterdir())
    frames = write_video(images, tmp_path / "clip.avi")
    weights = str(trained / "model_final.pth")
    out = tmp_path / "demo"
    load_tool("demo").main([str(CONFIG), "--weights", weights, "--input", str(data / "images/val"),
                            str(tmp_path / "clip.avi"), "--output", str(out), "--min-score", "0",
                            "--save-json", "model.roi_heads.score_thresh=0.0"])
    # (it said "wrote 4 picture(s)" of the video too)
    assert f"wrote 3 picture(s) and 1 video(s) and their JSON to {out}: " in capsys.readouterr().out
    predictor = Predictor(str(CONFIG), weights=weights,
                          overrides=["model.roi_heads.score_thresh=0.0"])
    assert sorted(p.name for p in out.iterdir()) == [
        "000000.jpg", "000000.json", "000001.jpg", "000001.json", "000002.jpg", "000002.json",
        "clip.jsonl", "clip.mp4"]
    for image in images:
        record = json.loads((out / f"{image.stem}.json").read_text())
        assert {k: record[k] for k in ("image", "height", "width")} == {
            "image": str(image), "height": 96, "width": 128}
        assert_json_holds(record, predictor(read_rgb(image)))
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [(r["video"], r["frame"]) for r in lines] == [(str(tmp_path / "clip.avi"), i)
                                                         for i in range(3)]
    for record, frame in zip(lines, frames, strict=True):
        assert_json_holds(record, predictor(frame))
    # another run into the folder, of one image: the others' files were left without a word
    load_tool("demo").main([str(CONFIG), "--weights", weights, "--input", str(images[1]),
                            "--output", str(out), "--save-json"])
    assert f"{out} also holds 6 file(s) this run did not write: 000000.jpg, 000000.json, " \
           f"000002.jpg, 000002.json, clip.jsonl ...\n" in capsys.readouterr().out
    # what is drawn, of --min-score or more; an image.png beside image.jpg gets image-2.json
    expected = predictor(read_rgb(images[0]))
    min_score = float(np.median(expected["scores"]))
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(images[0], both / "a.jpg")
    shutil.copy(images[0], both / "a.png")
    load_tool("demo").main([str(CONFIG), "--weights", weights, "--input", str(both),
                            "--output", str(tmp_path / "few"), "--min-score", str(min_score),
                            "--save-json", "model.roi_heads.score_thresh=0.0"])
    for name, source in (("a.json", "a.jpg"), ("a-2.json", "a.png")):
        record = json.loads((tmp_path / "few" / name).read_text())
        assert record["image"] == str(both / source)
        assert len(record["scores"]) == (expected["scores"] >= min_score).sum() < len(
            expected["scores"])
        assert_json_holds(record, expected, min_score)


def test_demo_reads_overrides_given_after_its_inputs(tmp_path: Path, monkeypatch) -> None:
    """`--input a.jpg model.roi_heads.score_thresh=0.3`: --input took the override as a file
    ("input not found"); a file whose name looks like one is still an input."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x=1.jpg").touch()
    parse = load_tool("demo").parse_args
    args = parse([str(CONFIG), "--weights", "w.pth", "--input", "a.jpg",
                  "model.roi_heads.score_thresh=0.3", "x=1.jpg", "photos/", "--output", "out",
                  "data.val.min_size=480"])
    assert args.input == ["a.jpg", "x=1.jpg", "photos/"]
    assert args.overrides == ["data.val.min_size=480", "model.roi_heads.score_thresh=0.3"]
    with pytest.raises(SystemExit) as refused:
        parse([str(CONFIG), "--weights", "w.pth", "--input", "model.x=1", "--output", "out"])
    assert refused.value.code == 2


@pytest.mark.parametrize("score", ["1.5", "nan", "-0.1"])
def test_demo_refuses_a_min_score_that_is_no_score(score: str, capsys) -> None:
    """An export's run took 1.5 or nan and drew nothing; a checkpoint's named the config key
    it was turned into, not the option typed."""
    with pytest.raises(SystemExit) as refused:
        load_tool("demo").parse_args([str(CONFIG), "--weights", "w.pth", "--input", "a.jpg",
                                      "--output", "out", "--min-score", score])
    assert refused.value.code == 2
    assert f"--min-score must be a score in [0, 1], got {float(score)}" in capsys.readouterr().err


def test_demo_draws_the_readable_images_then_names_the_others(trained: Path, data: Path,
                                                              tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("a.jpg", "c.jpg"):
        shutil.copy(data / "images/val/000000.jpg", folder / name)
    (folder / "b.jpg").write_bytes(b"not an image")
    (folder / "0.mp4").write_bytes(b"not a video")  # sorted first: it ended the run
    out = folder / "demo"  # inside the inputs: a rerun drew the pictures of the last run
    for _ in range(2):
        with pytest.raises(UnreadableImageError, match=r"2 of 4 inputs could not be read "
                                                       r"\(the others were drawn\):\n.*0.mp4\n"
                                                       r".*b.jpg"):
            load_tool("demo").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                                    "--input", str(folder), "--output", str(out)])
        assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "c.jpg"]
    # nothing drawn: no "others" said to be
    with pytest.raises(UnreadableImageError, match=r"1 of 1 inputs could not be read:\n"):
        load_tool("demo").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                                "--input", str(folder / "b.jpg"), "--output", str(out)])


def test_missing_annotations_key_fails_naming_file(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    content = json.loads((data / "coco/train.json").read_text())
    del content["annotations"]
    bad.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=rf"{bad}.*annotations"):
        load_tool("train").main(train_args(data, tmp_path / "run", 1,
                                           f"data.train.ann_file={bad}"))
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_val_categories_other_than_the_trainings_are_a_data_error(data: Path,
                                                                   tmp_path: Path) -> None:
    """A data error (one line, exit 2 from the command line), not a traceback."""
    content = json.loads((data / "coco/val.json").read_text())
    content["categories"].append({"id": 20, "name": "extra"})
    (tmp_path / "val.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=r"val.json: its categories are not the training "
                                           r"file's \(.*train.json\): the training file lacks "
                                           r"\['extra \(id 20\)'\]; give both files the same "
                                           r"categories \(the converters' --classes-from"):
        load_tool("train").main(train_args(data, tmp_path / "run", 1,
                                           f"data.val.ann_file={tmp_path / 'val.json'}"))
    # a val file converted without a class its images lack: named by name, not by an id
    content = json.loads((data / "coco/val.json").read_text())
    square = next(c["id"] for c in content["categories"] if c["name"] == "square")
    content["categories"] = [c for c in content["categories"] if c["id"] != square]
    content["annotations"] = [a for a in content["annotations"] if a["category_id"] != square]
    (tmp_path / "val.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=rf"the val file lacks \['square \(id {square}\)'\]; "
                                           r"give both"):
        load_tool("train").main(train_args(data, tmp_path / "run", 1,
                                           f"data.val.ann_file={tmp_path / 'val.json'}"))
    assert not list((tmp_path / "run").glob("*.pth"))


def test_val_categories_named_otherwise_than_the_trainings_are_a_data_error(
        data: Path, tmp_path: Path) -> None:
    """The same ids under other names (two exports of the same labels, numbered otherwise):
    class 1's detections would be scored against another class's objects."""
    content = json.loads((data / "coco/val.json").read_text())
    first, second = content["categories"][:2]
    first["name"], second["name"] = second["name"], first["name"]
    (tmp_path / "val.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=r"val.json: its categories are not the training "
                                           r"file's .*: other ids \['circle: 1 in training, 3 "
                                           r"in val', 'square: 3 in training, 1 in val'\]"):
        load_tool("train").main(train_args(data, tmp_path / "run", 1,
                                           f"data.val.ann_file={tmp_path / 'val.json'}"))
    assert not list((tmp_path / "run").glob("*.pth"))


def test_missing_image_fails_naming_it(data: Path, tmp_path: Path) -> None:
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    files = sorted((data / "images/train").iterdir())
    for f in files[1:]:
        (img_dir / f.name).symlink_to(f)
    with pytest.raises(ValueError, match=files[0].name):
        load_tool("train").main(train_args(data, tmp_path / "run", 1,
                                           f"data.train.img_dir={img_dir}"))
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_a_training_file_without_usable_boxes_stops_before_the_first_step(
        data: Path, tmp_path: Path) -> None:
    crowd = tmp_path / "crowd.json"
    content = json.loads((data / "coco/train.json").read_text())
    for ann in content["annotations"]:
        ann["iscrowd"] = 1  # crowd regions are not training boxes
    crowd.write_text(json.dumps(content))
    n = len(content["annotations"])
    for filter_empty in ("false", "true"):
        with pytest.raises(ValueError, match=rf"{crowd}: no usable object in its 6 images "
                           rf"\(left out {n} crowd and 0 degenerate boxes; "
                           rf"filter_empty={filter_empty.title()}\)"):
            load_tool("train").main(train_args(data, tmp_path / "run", 1,
                                               f"data.train.ann_file={crowd}",
                                               f"data.train.filter_empty={filter_empty}"))
    assert not (tmp_path / "run" / "model_final.pth").exists()
    # Mask R-CNN: objects without a usable mask are left out too, and the message says why
    for ann in content["annotations"]:
        ann.update(iscrowd=0, segmentation=[])
    crowd.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=rf"left out 0 crowd and 0 degenerate boxes, {n} "
                                         "without a usable polygon or RLE, which model.mask_on"):
        load_tool("train").main(train_args(data, tmp_path / "run", 1, "model.mask_on=true",
                                           f"data.train.ann_file={crowd}"))


def test_training_batches_take_one_scale_with_scale_per_batch(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnet_detect.engine import runner
    shapes: list[set[tuple[int, ...]]] = []
    original = runner.build_train_loader

    def recording(*args: object, **kwargs: object) -> object:
        loader = original(*args, **kwargs)

        class Recorded:
            def __iter__(self) -> Iterator[list[dict[str, torch.Tensor]]]:
                for batch in loader:
                    shapes.append({tuple(s["image"].shape) for s in batch})
                    yield batch
        return Recorded()

    monkeypatch.setattr(runner, "build_train_loader", recording)
    # the synthetic scenes are 96x128: one orientation, so the scale alone can vary in a batch
    load_tool("train").main(train_args(data, tmp_path / "run", 6, "data.train.min_size=[64,96]",
                                       "data.train.scale_per_batch=true", "train.batch_size=3"))
    assert len(shapes) >= 6 and all(len(shape) == 1 for shape in shapes)
    assert {min(next(iter(shape))[1:]) for shape in shapes} == {64, 96}


def test_scale_per_batch_must_be_a_bool(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.train.scale_per_batch must be true or false, "
                       "got 'sometimes'"):
        load_tool("train").main(train_args(data, tmp_path / "run", 1,
                                           "data.train.scale_per_batch=sometimes"))
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_coco_backend_from_the_config_scores_training_and_eval_flag_overrides_it(
        trained: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used = spy_on_coco_backends(monkeypatch)
    load_tool("train").main(train_args(data, tmp_path / "run", 1,
                                       "data.val.coco_backend=faster_coco_eval"))
    assert used == ["faster_coco_eval"]
    load_tool("eval").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                            "--output", str(tmp_path / "eval"), *data_overrides(data),
                            "data.val.coco_backend=faster_coco_eval", "--backend", "pycocotools"])
    assert used == ["faster_coco_eval", "pycocotools"]


@pytest.mark.parametrize("tool", ["train", "eval"])
def test_an_unknown_coco_backend_is_refused_naming_the_key(trained: Path, data: Path,
                                                            tmp_path: Path, tool: str) -> None:
    args = (train_args(data, tmp_path / "run", 1, "data.val.coco_backend=fast") if tool == "train"
            else [str(CONFIG), "--weights", str(trained / "model_final.pth"), "--output",
                  str(tmp_path / "eval"), *data_overrides(data), "data.val.coco_backend=fast"])
    with pytest.raises(ValueError, match=r"data.val.coco_backend must be one of \('pycocotools', "
                       r"'faster_coco_eval'\), got 'fast'"):
        load_tool(tool).main(args)
    assert not list(tmp_path.glob("run/*.pth")) and not (tmp_path / "eval").exists()


def test_export_and_onnx_runs_refuse_what_they_cannot_do_naming_it(
        trained: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export, weights = load_tool("export"), str(trained / "model_final.pth")
    args = [str(CONFIG), *data_overrides(data)]
    with pytest.raises(ValueError, match=r"model.num_classes is 3 but the weights .*"
                                         r"model_final.pth have 6 classes"):
        export.main([*args, "model.num_classes=3", "--weights", weights, "--output",
                     str(tmp_path / "bad")])
    study = str(ROOT / "configs/analyze/cifar_synthetic.yaml")
    with pytest.raises(ValueError, match=r"exports classification, detection and sem_seg "
                                         r"models; .*cifar_synthetic.yaml is a 'analyze' config"):
        export.main([study, "--weights", weights, "--output", str(tmp_path / "bad")])
    for choice in ("box", "pasted"):
        with pytest.raises(ValueError, match=r"--mask-output\) is for Mask R-CNN \(model."
                                             r"mask_on: true\); this detector has no masks"):
            export.main([*args, "--weights", weights, "--output", str(tmp_path / "bad"),
                         "--mask-output", choice])
    segmenter = str(ROOT / "configs/synthetic/deeplabv3plus_R_18_os16.yaml")
    with pytest.raises(ValueError, match=r"--mask-output is for Mask R-CNN; .*"
                                         r"deeplabv3plus_R_18_os16.yaml is a 'sem_seg' config"):
        export.main([segmenter, "--weights", weights, "--output", str(tmp_path / "bad"),
                     "--mask-output", "pasted"])
    assert not (tmp_path / "bad").exists()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnx", None)
        # (an ExportError, which run_tool says in the installed package's spelling; it was a
        # SystemExit naming tools/export.py there, exit 1)
        with pytest.raises(ExportError, match=r"tools/export.py needs onnx: pip install"):
            export.main([*args, "--weights", weights, "--output", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match=r"an exported graph runs one view .*test\.flip=true"):
        export.main([*args, "--weights", weights, "--output", str(tmp_path / "bad"),
                     "test.flip=true"])
    with pytest.raises(ValueError, match=r"an exported graph runs the whole image once; .*"
                                         r"test\.tiles\.size=\[64,64\]\): add "
                                         r"test\.tiles\.size=null"):
        export.main([*args, "--weights", weights, "--output", str(tmp_path / "bad"),
                     "test.tiles.size=[64,64]"])
    assert not (tmp_path / "bad").exists()
    export.main([*args, "--weights", weights, "--output", str(tmp_path / "onnx")])
    with pytest.raises(ValueError, match=r"the exported graph .*model.onnx runs one view "
                                         r".*test\.min_sizes=\[80,96\]"):
        load_tool("eval").main([*args, "--weights", str(tmp_path / "onnx/model.onnx"),
                                "--output", str(tmp_path / "eval"), "test.min_sizes=[80,96]"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ValueError, match=r"onnx/model.onnx needs onnxruntime: pip install"):
        load_tool("eval").main([*args, "--weights", str(tmp_path / "onnx/model.onnx"),
                                "--output", str(tmp_path / "eval")])


def test_a_folder_another_export_or_evaluation_writes_is_refused_and_leftovers_go(
        trained: Path, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two exports into one folder at once left one's graph under the other's metadata, both
    exit 0; two evaluations each reported files of the other. What a killed int8 export left
    (its float32 graph, the quantizer's copy) stayed in the folder through later exports."""
    from resnet_detect.engine.run_lock import FolderInUseError, exclusive_tool_folder
    export, evaluate = load_tool("export"), load_tool("eval")
    args = [str(CONFIG), *data_overrides(data), "--weights", str(trained / "model_final.pth")]
    out = tmp_path / "onnx"
    export.main([*args, "--output", str(out)])
    whole = {p.name: p.read_bytes() for p in out.iterdir()}
    with exclusive_tool_folder(out, "tools/export.py"):  # the other export, still writing
        for tool in (export, evaluate):
            name = "export" if tool is export else "eval"
            with pytest.raises(FolderInUseError, match=rf"^{out} is in use: another export or "
                                                       rf"evaluation writes there now, and "
                                                       rf"tools/{name}.py would mix its files "
                                                       rf"with that one's; wait for it to end, "
                                                       rf"or give another --output$"):
                if tool is export:
                    export.main([*args, "--output", str(out)])
                else:  # (an evaluation of the graph into the export's own folder)
                    evaluate.main([*args[:-2], "--weights", str(out / "model.onnx"), "--output",
                                   str(out)])
        assert {p.name: p.read_bytes() for p in out.iterdir()} == whole
    (out / ".float32-k593dnd9").mkdir()
    (out / ".float32-k593dnd9/model.onnx").write_bytes(b"x" * 100)
    (out / ".quantize-ms5341u7").mkdir()
    (out / "model.onnx.partial").write_bytes(b"x" * 100)
    with caplog.at_level(logging.INFO):
        export.main([*args, "--output", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx"]
    assert (f"removed what an interrupted export left in {out}: .float32-k593dnd9, "
            f".quantize-ms5341u7, model.onnx.partial") in caplog.text


def test_damaged_export_folders_are_refused_naming_the_file_and_key(
        trained: Path, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = [str(CONFIG), *data_overrides(data)]
    folder = tmp_path / "onnx"
    load_tool("export").main([*args, "--weights", str(trained / "model_final.pth"),
                              "--output", str(folder)])
    with pytest.raises(ValueError, match=r"--weights .*onnx is an export already; "
                                         r"tools/export.py exports the .pth checkpoint"):
        load_tool("export").main([*args, "--weights", str(folder), "--output",
                                  str(tmp_path / "again")])
    assert not (tmp_path / "again").exists()
    upper = tmp_path / "upper"
    upper.mkdir()
    (folder / "model.onnx").rename(upper / "MODEL.ONNX")
    shutil.copy(folder / "export.json", upper)
    out = Predictor(None, weights=upper / "MODEL.ONNX")(np.zeros((64, 80, 3), np.uint8))
    assert out["boxes"].shape[1:] == (4,)  # an upper-case suffix: ONNX, not a checkpoint
    with caplog.at_level("WARNING", logger="resnet_detect.detection.predictor"):
        Predictor(None, weights=upper / "MODEL.ONNX", overrides=[
            "model.roi_heads.score_thresh=0.5", "data.val.max_size=99", "data.num_workers=0",
            "model.backbone.freeze_at=3"])
        Predictor(str(CONFIG), weights=upper / "MODEL.ONNX", overrides=data_overrides(data))
        assert caplog.text.count("WARNING") == 1  # the config it was exported with: no word
        # a Mask R-CNN config (masks off) and its own test size
        Predictor(str(ROOT / "configs/synthetic/mask_rcnn_R_18_FPN.yaml"),
                  weights=upper / "MODEL.ONNX", overrides=["model.mask_on=false"])
    # (a score threshold above the graph's is applied: Predictor.score_thresh)
    assert (f"the exported graph {upper / 'MODEL.ONNX'} runs as it was exported, not as the "
            f"config says: data.val.max_size 160 (config: 99); model.backbone.freeze_at not "
            f"applied; export again with the settings wanted") in caplog.text
    assert ("not as the config says: data.val.min_size 96 (config: 320); data.val.max_size 160 "
            "(config: 533); export again") in caplog.text
    # with its masks on, whose evaluation would score no masks: refused, as for a .pth
    with pytest.raises(ValueError, match=r"have no mask head but model.mask_on is True; use a "
                                         r"Faster R-CNN config"):
        Predictor(str(ROOT / "configs/synthetic/mask_rcnn_R_18_FPN.yaml"),
                  weights=upper / "MODEL.ONNX")
    with pytest.raises(ValueError, match=r"onnx/model.onnx: no such ONNX file"):
        Predictor(None, weights=folder)  # export.json without its graph
    metadata = json.loads((upper / "export.json").read_text())
    for key in ("pixel_mean", "category_ids"):
        broken = {k: v for k, v in metadata.items() if k != key}
        rewrite_export_metadata(upper / "MODEL.ONNX", broken)
        with pytest.raises(ValueError, match=rf"upper/MODEL.ONNX's own metadata lacks "
                                             rf"\['{key}'\]; export again with tools/export.py"):
            Predictor(None, weights=upper / "MODEL.ONNX")


def test_a_best_metric_the_model_does_not_evaluate_is_refused_before_training(
        data: Path, tmp_path: Path) -> None:
    """segm/AP on a Faster R-CNN (no masks) was found at the first evaluation, hours in."""
    train = load_tool("train").main
    with pytest.raises(ConfigError, match=r"train.best_metric 'segm/AP' is not a metric of this "
                                          r"task's evaluations; valid: bbox/AP, bbox/AP50, .*"
                                          r"bbox/APf \(APr, APc, APf: an LVIS val file's "
                                          r"only\)$"):
        train(train_args(data, tmp_path / "out", 2, "train.best_metric=segm/AP"))
    assert not (tmp_path / "out").exists()


def test_a_best_metric_of_lvis_frequency_groups_needs_an_lvis_val_file(
        data: Path, tmp_path: Path) -> None:
    train = load_tool("train").main
    with pytest.raises(ConfigError, match=r"train.best_metric 'bbox/APr' is a group of LVIS's "
                                          r"federated AP; .*val.json is scored with COCO's AP"):
        train(train_args(data, tmp_path / "out", 2, "train.best_metric=bbox/APr"))
    assert not list((tmp_path / "out").glob("*.pth"))
    lvis = json.loads((data / "coco/val.json").read_text())
    for image in lvis["images"]:
        image["neg_category_ids"], image["not_exhaustive_category_ids"] = [], []
    for category in lvis["categories"]:
        category["frequency"] = "f"
    (tmp_path / "lvis_val.json").write_text(json.dumps(lvis))
    # no rare category: APr is never defined, and no model_best.pth was kept, silently
    with pytest.raises(ConfigError, match=r"train.best_metric 'bbox/APr': no category of "
                                          r".*lvis_val.json with objects has frequency 'r'"):
        train(train_args(data, tmp_path / "out", 2, "train.best_metric=bbox/APr",
                         f"data.val.ann_file={tmp_path / 'lvis_val.json'}"))
    for category in lvis["categories"]:
        category["frequency"] = "r"
    (tmp_path / "lvis_val.json").write_text(json.dumps(lvis))
    train(train_args(data, tmp_path / "lvis", 2, "train.best_metric=bbox/APr",
                     f"data.val.ann_file={tmp_path / 'lvis_val.json'}"))
    best = torch.load(tmp_path / "lvis/model_best.pth", map_location="cpu", weights_only=True)
    metrics = json.loads((tmp_path / "lvis/metrics.json").read_text())
    assert best["best"] == {"metric": "bbox/APr", "value": metrics["bbox"]["APr"], "mode": "max"}


def test_an_lvis_val_file_s_lists_and_frequencies_are_checked_before_training(
        data: Path, tmp_path: Path) -> None:
    """A malformed image list was found at the first evaluation (after training and the
    val inference: hours at LVIS's size), a missing frequency never (APr/APc/APf changed)."""
    lvis = json.loads((data / "coco/val.json").read_text())
    for image in lvis["images"]:
        image["neg_category_ids"], image["not_exhaustive_category_ids"] = [], []
    for category in lvis["categories"]:
        category["frequency"] = "c"
    lvis["images"][1]["not_exhaustive_category_ids"] = "3"
    (tmp_path / "lvis_val.json").write_text(json.dumps(lvis))
    image_id = lvis["images"][1]["id"]
    with pytest.raises(DatasetError, match=f"lvis_val.json: image id {image_id}: "
                                           f"not_exhaustive_category_ids must be a list of "
                                           f"category ids, got '3'"):
        load_tool("train").main(train_args(data, tmp_path / "out", 2,
                                           f"data.val.ann_file={tmp_path / 'lvis_val.json'}"))
    lvis["images"][1]["not_exhaustive_category_ids"] = []
    del lvis["categories"][0]["frequency"]
    (tmp_path / "lvis_val.json").write_text(json.dumps(lvis))
    with pytest.raises(DatasetError, match=r"lvis_val.json: category id \d+ \('\w+'\): frequency "
                                           r"must be 'r', 'c' or 'f'"):
        load_tool("train").main(train_args(data, tmp_path / "out", 2,
                                           f"data.val.ann_file={tmp_path / 'lvis_val.json'}"))
    assert not list((tmp_path / "out").glob("*.pth"))


def test_a_bad_test_section_is_refused_before_training(data: Path, tmp_path: Path) -> None:
    """Unused by the training's own evaluations, it failed at tools/eval.py afterwards."""
    with pytest.raises(ConfigError, match=r"test.max_size must be a positive integer"):
        load_tool("train").main(train_args(data, tmp_path / "out", 2, "test.max_size=[1]"))
    assert not list((tmp_path / "out").glob("*.pth"))
    # and before the training file is read (minutes at COCO's size)
    with pytest.raises(ConfigError, match=re.escape("test.min_sizes must be positive integers "
                                                    "(pixels), got [0, 64]")):
        load_tool("train").main(train_args(data, tmp_path / "out", 2, "test.min_sizes=[0,64]",
                                           f"data.train.ann_file={tmp_path / 'nowhere.json'}"))
    with pytest.raises(ConfigError, match=r"test.compile_mode must be one of default, "
                                          r"reduce-overhead, .*got 'reduce_overhead'"):
        load_tool("train").main(train_args(data, tmp_path / "out", 2, "test.compile=true",
                                           "test.compile_mode=reduce_overhead",
                                           f"data.train.ann_file={tmp_path / 'nowhere.json'}"))


def test_a_best_metric_the_val_split_leaves_undefined_is_warned_of(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """APl of scenes without large objects is NaN: no model_best.pth, and nothing said."""
    with caplog.at_level(logging.WARNING):
        load_tool("train").main(train_args(data, tmp_path / "out", 2,
                                           "train.best_metric=bbox/APl"))
    assert "train.best_metric bbox/APl is undefined (NaN) at iteration 2" in caplog.text
    assert not (tmp_path / "out/model_best.pth").exists()


def test_accumulation_draws_smaller_batches_of_the_same_stream(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """train.batch_size=4 in 2 batches of 2: the loader draws batches of 2, starting where a
    resumed run's step would (2 batches per step), and the log says so; a count that does
    not divide the batch is refused naming the key, before any training."""
    from resnet_detect.engine import runner
    asked = []
    original = runner.build_train_loader

    def recording(dataset: object, **kwargs: object) -> object:
        asked.append((kwargs["batch_size"], kwargs["start_iter"]))
        return original(dataset, **kwargs)

    monkeypatch.setattr(runner, "build_train_loader", recording)
    with caplog.at_level("INFO"):
        load_tool("train").main(train_args(data, tmp_path / "run", 2, "train.batch_size=4",
                                           "train.accumulation_steps=2",
                                           "train.checkpoint_period=1"))
    assert asked == [(2, 0)]
    assert "1 process x 4 images per step in 2 batches of 2" in caplog.text
    assert (tmp_path / "run" / "model_final.pth").exists()
    load_tool("train").main(train_args(data, tmp_path / "run", 3, "train.batch_size=4",
                                       "train.accumulation_steps=2", "--resume"))
    assert asked[-1] == (2, 4)  # 2 steps done x 2 batches
    with pytest.raises(ValueError, match=r"train.accumulation_steps 3 does not divide the 4 "
                                         r"images per step of each of the 1 processes"):
        load_tool("train").main(train_args(data, tmp_path / "bad", 1, "train.batch_size=4",
                                           "train.accumulation_steps=3"))
    assert not (tmp_path / "bad").exists()  # refused before the run's folder and its log
    with pytest.raises(ValueError, match=r"train.accumulation_steps must be a positive integer"):
        load_tool("train").main(train_args(data, tmp_path / "bad", 1,
                                           "train.accumulation_steps=0"))
    assert not (tmp_path / "bad" / "model_final.pth").exists()


def test_names_in_other_scripts_train_log_and_resume_on_any_default_encoding(
        data: Path, tmp_path: Path) -> None:
    """Windows opens text as cp1252 unless told otherwise: class names in Cyrillic or CJK
    stopped the first evaluation's per-category table (printed to a redirected console),
    config.yaml in a folder named "José" was written as cp1252 and not read back. Every text
    file is opened as UTF-8 (no EncodingWarning of ours under -X warn_default_encoding) and
    the console escapes what its encoding lacks."""
    import subprocess
    from omegaconf import OmegaConf
    names = ["круг", "三角形", "Müll"]
    for split in ("train", "val"):
        coco = json.loads((data / f"coco/{split}.json").read_bytes())
        for category, name in zip(coco["categories"], names * 9):
            category["name"] = f"{name}{category['id']}"
        (tmp_path / f"{split}.json").write_text(json.dumps(coco, ensure_ascii=False),
                                                 encoding="utf-8")
    out = tmp_path / "José"
    args = [*train_args(data, out, 2, "train.checkpoint_period=1"),
            f"data.train.ann_file={tmp_path}/train.json", f"data.val.ann_file={tmp_path}/val.json"]
    script = ("import sys, runpy, warnings, torch, cv2\n"  # their own imports warn: before
              "warnings.simplefilter('error', EncodingWarning)\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = {**__import__("os").environ, "PYTHONIOENCODING": "cp1252", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    for extra in ([], ["--resume", "train.max_iter=3"]):
        run = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-c", script,
                              str(ROOT / "tools/train.py"), *args, *extra],
                             capture_output=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr.decode("utf-8", "replace")[-3000:]
    assert "\\u043a\\u0440\\u0443\\u0433" in run.stdout.decode("cp1252")  # escaped on the console
    assert "круг1" in (out / "log.txt").read_text(encoding="utf-8")
    assert OmegaConf.load(out / "config.yaml").train.output_dir == str(out)
    assert "круг1" in json.loads((out / "metrics.json").read_bytes())["bbox"]["per_category"]


def test_voc_s_ap_scores_training_and_eval_when_asked(trained: Path, data: Path,
                                                      tmp_path: Path) -> None:
    """data.val.voc_metric: voc/mAP beside COCO's numbers, in the training's metrics (and as
    train.best_metric) and in tools/eval.py's metrics.json, as detection.voc_eval scores the
    written results; an unknown mode refused before anything runs."""
    from resnet_detect.detection.voc_eval import evaluate_voc
    result = load_tool("train").main(train_args(
        data, tmp_path / "run", 1, "data.val.voc_metric=area", "train.best_metric=voc/mAP",
        "model.roi_heads.score_thresh=0.0"))
    assert set(result["all_metrics"]) == {"bbox", "voc"}
    assert result["all_metrics"]["voc"]["mode"] == "area"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["voc"]["mode"] == "area"
    assert (tmp_path / "run" / "model_best.pth").is_file()
    out = tmp_path / "eval"
    load_tool("eval").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                            "--output", str(out), *data_overrides(data),
                            "model.roi_heads.score_thresh=0.0", "data.val.voc_metric=11point"])
    written = json.loads((out / "metrics.json").read_text())["voc"]
    results = json.loads((out / "coco_instances_results.json").read_text())
    expected = evaluate_voc(data / "coco/val.json", results, mode="11point", verbose=False)
    assert written["mAP"] == pytest.approx(expected["mAP"]) and 0 < written["mAP"] <= 100
    for tool in ("train", "eval"):
        args = (train_args(data, tmp_path / "bad", 1, "data.val.voc_metric=voc07")
                if tool == "train" else
                [str(CONFIG), "--weights", str(trained / "model_final.pth"), "--output",
                 str(tmp_path / "bad_eval"), *data_overrides(data), "data.val.voc_metric=voc07"])
        with pytest.raises(ConfigError, match="data.val.voc_metric must be null or one of"):
            load_tool(tool).main(args)
    assert not (tmp_path / "bad_eval").exists() and not list(tmp_path.glob("bad/*.pth"))
    with pytest.raises(ConfigError, match=r"train.best_metric 'voc/mAP' is not a metric of this "
                                          r"task's evaluations \(voc/mAP comes with "
                                          r"data.val.voc_metric=11point or area\); valid: "):
        load_tool("train").main(train_args(data, tmp_path / "bad", 1, "train.best_metric=voc/mAP"))


def test_eval_refuses_a_val_file_without_images(trained: Path, data: Path,
                                                tmp_path: Path) -> None:
    """It said "has no annotations: detections written, nothing scored" and exited 0."""
    from resnet_detect.engine.data import DatasetError
    empty = tmp_path / "empty.json"
    coco = json.loads((data / "coco/val.json").read_text())
    empty.write_text(json.dumps({**coco, "images": [], "annotations": []}))
    with pytest.raises(DatasetError, match=f"{empty} lists no images: nothing to evaluate "
                                           r"\(a training without evaluations: "
                                           r"data.val.ann_file=null data.val.img_dir=null\)"):
        load_tool("eval").main([str(CONFIG), "--weights", str(trained / "model_final.pth"),
                                "--output", str(tmp_path / "e"), *data_overrides(data),
                                f"data.val.ann_file={empty}"])
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_a_negative_max_size_and_loader_workers_are_named_before_the_data_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """max_size=-1 ("no cap" elsewhere) resized every image to 1 pixel: trained, scored and
    exported so; eval.py's data.num_workers=-1 was a DataLoader traceback."""
    missing = tmp_path / "no_data"  # nothing is read before the refusals
    for key in ("data.train.max_size", "data.val.max_size"):
        with pytest.raises(ConfigError, match=rf"{key} must be a positive integer \(pixels\), "
                                              rf"or 0 or null for no cap, got -1"):
            load_tool("train").main(train_args(missing, tmp_path / "out", 1, f"{key}=-1"))
    with pytest.raises(ConfigError, match=r"data.num_workers must be an integer >= 0"):
        load_tool("eval").main([*train_args(missing, tmp_path / "out", 1), "--weights", "w.pth",
                                "--output", str(tmp_path / "eval"), "data.num_workers=-1"])
    with pytest.raises(ConfigError, match=r"--seed must be >= 0, got -1"):
        load_tool("browse_dataset").main([str(CONFIG), "--output", str(tmp_path / "b"),
                                          "--seed", "-1"])


def test_an_int8_export_runs_in_eval_demo_and_predictor_as_a_float32_one(
        trained: Path, data: Path, exported: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """tools/export.py --quantize int8: DIR/model.onnx is the int8 graph (QDQ), calibrated on
    the validation images; the tools and Predictor run it as any export."""
    import onnx

    args = [str(CONFIG), *data_overrides(data), "model.roi_heads.score_thresh=0.0"]
    weights = str(trained / "model_final.pth")
    export = tmp_path / "int8"
    metadata = load_tool("export").main([*args, "--weights", weights, "--output", str(export),
                                         "--quantize", "int8", "--calibration-images", "2"])
    assert "model.onnx (int8) and export.json" in capsys.readouterr().out
    assert sorted(p.name for p in export.iterdir()) == ["export.json", "model.onnx"]
    quantization = metadata["quantization"]
    assert quantization["format"] == "QDQ" and quantization["dtype"] == "int8"
    assert quantization["calibration"]["images"] == 2  # of the 3 val images: 0 and 1
    assert str(data / "coco/val.json") in quantization["calibration"]["source"]
    assert json.loads((export / "export.json").read_text()) == metadata
    graph = onnx.load(str(export / "model.onnx"))
    assert json.loads({p.key: p.value for p in graph.metadata_props}["export_json"]) == metadata
    assert sum(node.op_type == "QuantizeLinear" for node in graph.graph.node) > 20
    float32 = exported  # ([*args, "--weights", weights]'s export)
    assert "quantization" not in json.loads((float32 / "export.json").read_text())
    metrics = {name: load_tool("eval").main([*args, "--weights", str(folder), "--output",
                                             str(tmp_path / f"eval_{name}")])
               for name, folder in (("int8", export), ("fp32", float32))}
    assert metrics["int8"]["images"] == metrics["fp32"]["images"]
    assert metrics["int8"]["exported_from"] == metrics["fp32"]["exported_from"] == {
        "weights": weights, "sha256": hashlib.sha256(Path(weights).read_bytes()).hexdigest()}
    results = json.loads((tmp_path / "eval_int8/coco_instances_results.json").read_text())
    assert len(results) > 0
    out = Predictor(str(CONFIG), weights=export, overrides=[
        *data_overrides(data), "model.roi_heads.score_thresh=0.0"])(
        cv2.imread(str(data / "images/val/000000.jpg"))[:, :, ::-1].copy())
    assert out["boxes"].shape[1:] == (4,) and len(out["boxes"]) > 0
    written = load_tool("demo").main([*args, "--weights", str(export / "model.onnx"),
                                      "--input", str(data / "images/val/000000.jpg"),
                                      "--output", str(tmp_path / "demo"), "--min-score", "0"])
    assert cv2.imread(str(written[0])).shape == (96, 128, 3)
    # benchmarks/onnx_int8.py, whose figures README gives, times the two on the val images
    spec = importlib.util.spec_from_file_location("onnx_int8", ROOT / "benchmarks/onnx_int8.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    times = bench.main([*args, "--exports", str(float32), str(export), "--images", "2",
                        "--repeats", "1"])
    assert list(times) == [f"{float32} (float32)", f"{export} (int8)"]
    assert all(ms > 0 for ms in times.values())
    assert "ratio first / second:" in capsys.readouterr().out
    # refused before anything is written, naming the option
    for extra, message in (
            (["--quantize", "int8", "--calibration-images", "0"],
             r"--calibration-images must be 1 or more, got 0"),
            (["--calibration-images", "4"], r"--calibration-images is for --quantize int8"),
            (["--quantize", "int8", "data.val.ann_file=null", "data.val.img_dir=null"],
             r"--quantize int8 calibrates on the config's validation images; data.val")):
        with pytest.raises(ValueError, match=message):
            load_tool("export").main([*args, "--weights", weights, "--output",
                                      str(tmp_path / "bad"), *extra])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):  # argparse: int8 is the one choice
        load_tool("export").main([*args, "--weights", weights, "--output",
                                  str(tmp_path / "bad"), "--quantize", "int4"])
