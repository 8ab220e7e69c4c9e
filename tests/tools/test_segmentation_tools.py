"""DeepLabV3 through tools/train.py, tools/eval.py and tools/demo.py on tiny synthetic scenes.

The quickstart config (evaluated at test.scales [0.5]) with random weights, 16-channel heads
and 2 training steps: the numbers checked are the plumbing, not accuracy. The mIoU that
tools/train.py prints at the end must be the one tools/eval.py computes for the same weights,
so both must run the config's test-time scales.
"""
from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tests.export_metadata import rewrite_export_metadata
from resnet_detect import segmentation
from resnet_detect.segmentation import predictor, training
from resnet_detect.engine.data import DatasetError
from resnet_detect.engine.tasks import load_task_config
from resnet_detect.segmentation.data import build_dataset
from tests.tools.test_train_eval_demo import ROOT, data, load_tool, read_rgb, write_video

CONFIG = ROOT / "configs/synthetic/deeplabv3_R_18_os16.yaml"
CLASSES = ["background", "circle", "square", "triangle", "star", "cross", "ellipse"]
# fixtures imported to apply here too: the autouse log clean-up and the tiny synthetic set
__all__ = ["data"]


def overrides(root: Path) -> list[str]:
    return [f"data.train.img_dir={root}/images/train", f"data.train.mask_dir={root}/semantic/train",
            f"data.val.img_dir={root}/images/val", f"data.val.mask_dir={root}/semantic/val",
            f"data.class_names={root}/semantic/classes.json", "data.train.crop_size=[64,64]",
            "data.num_workers=0", "model.backbone.weights=null", "model.head.channels=16",
            "model.aux_head.channels=8", "train.batch_size=2", "train.log_period=1",
            "train.warmup_iters=1"]


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    result = load_tool("train").main([str(CONFIG), *overrides(data), "train.max_iter=2",
                                      f"train.output_dir={out}"])
    return out, result


def test_train_writes_a_segmenter_and_eval_reproduces_its_miou(
        trained: tuple[Path, dict], data: Path, tmp_path: Path) -> None:
    out, result = trained
    assert result["task"] == "sem_seg"
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 2
    assert ckpt["provenance"]["class_names"] == CLASSES
    assert ckpt["model"]["head.predictor.weight"].shape == (7, 16, 1, 1)
    load_tool("eval").main([str(CONFIG), "--weights", str(out / "model_final.pth"),
                            "--output", str(tmp_path / "eval"), *overrides(data)])
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())["sem_seg"]
    assert set(metrics) >= {"mIoU", "pixel_acc", "per_class_iou"}
    assert list(metrics["per_class_iou"]) == CLASSES
    assert 0 < metrics["pixel_acc"] <= 100
    assert metrics["mIoU"] == pytest.approx(result["metrics"]["mIoU"], abs=1e-9)
    assert metrics["pixel_acc"] == pytest.approx(result["metrics"]["pixel_acc"], abs=1e-9)
    # the training's last evaluation is in its folder too (as detectron2's metrics.json)
    written = json.loads((out / "metrics.json").read_text())
    assert written["sem_seg"]["mIoU"] == pytest.approx(result["metrics"]["mIoU"], abs=1e-9)
    val_images = len(list((data / "images/val").glob("*.jpg")))
    assert written["images"] == {"images": val_images, "unreadable": 0}
    # data whose ids mean other classes than the checkpoint's: refused, not scored as if not
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps([CLASSES[0], CLASSES[2], CLASSES[1], *CLASSES[3:]]))
    with pytest.raises(ValueError, match="model_final.pth was trained on the classes .*circle'"
                                         ", 'square'.*swapped.json.*'square', 'circle'.*other"):
        load_tool("eval").main([str(CONFIG), "--weights", str(out / "model_final.pth"),
                                "--output", str(tmp_path / "eval2"), *overrides(data),
                                f"data.class_names={swapped}"])


def test_coco_val_classes_other_than_the_trainings_or_the_weights_are_refused(
        trained: tuple[Path, dict], data: Path, tmp_path: Path) -> None:
    """Both COCO files number their classes by category id: a val file that names them
    otherwise (another export of the same labels), or has another category, would score
    one class's pixels as another's."""
    content = json.loads((data / "coco/val.json").read_text())
    names = {c["id"]: c["name"] for c in content["categories"]}
    ids = sorted(names)
    renamed = dict(content, categories=[{"id": i, "name": names[j]}
                                        for i, j in zip(ids, ids[::-1])])
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    coco = [f"data.train.ann_file={data}/coco/train.json", "data.train.mask_dir=null",
            f"data.val.ann_file={tmp_path / 'renamed.json'}", "data.val.mask_dir=null",
            "data.class_names=null"]
    with pytest.raises(ValueError, match=r"renamed.json gives the classes \['background', "
                                         r"'ellipse', .*train.json\) \['background', "
                                         r"'circle', .*other classes"):
        load_tool("train").main([str(CONFIG), *overrides(data), *coco, "train.max_iter=1",
                                 f"train.output_dir={tmp_path / 'run'}"])
    assert not list((tmp_path / "run").glob("*.pth"))
    # the weights' classes against a val file's: by name, with data.class_names unset
    weights = str(trained[0] / "model_final.pth")
    args = [str(CONFIG), "--weights", weights, *overrides(data), "data.val.mask_dir=null",
            "data.class_names=null"]
    with pytest.raises(ValueError, match=r"model_final.pth was trained on the classes "
                                         r"\['background', 'circle', .*renamed.json has "
                                         r"\['background', 'ellipse', .*other classes"):
        load_tool("eval").main([*args, f"data.val.ann_file={tmp_path / 'renamed.json'}",
                                "--output", str(tmp_path / "renamed")])
    scored = load_tool("eval").main([*args, f"data.val.ann_file={data}/coco/val.json",
                                     "--output", str(tmp_path / "same")])
    assert list(scored["sem_seg"]["per_class_iou"]) == CLASSES


def test_eval_checks_every_val_mask_before_the_inference(
        trained: tuple[Path, dict], data: Path, tmp_path: Path) -> None:
    """A wrong val mask was first read by a loader worker partway through the inference: a
    DatasetError whose message was the worker's whole traceback."""
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in sorted((data / "semantic/val").glob("*.png")):
        (masks / path.name).write_bytes(path.read_bytes())
    first, second = sorted(masks.glob("*.png"))[:2]
    cv2.imwrite(str(first), np.full(cv2.imread(str(first), 0).shape, 9, np.uint8))
    cv2.imwrite(str(second), np.zeros((7, 5), np.uint8))
    with pytest.raises(DatasetError,
                       match=rf"(?s)^data.val: 2 of {len(list(masks.glob('*.png')))} masks are "
                             rf"wrong:.*{first.name} has class ids \[9\].*{second.name} is 5x7"):
        load_tool("eval").main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                                "--output", str(tmp_path / "eval"), *overrides(data),
                                f"data.val.mask_dir={masks}", "data.num_workers=1"])
    assert not (tmp_path / "eval/metrics.json").exists()


def test_a_training_mask_a_loader_worker_refuses_is_one_line_in_the_log(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """log.txt's "training stopped" line held the worker's whole traceback ("Caught
    DatasetError in DataLoader worker process 0. Original Traceback ...") where the console
    had the message alone. (Masks the sample read at the start finds wrong are all listed
    before training: here the sample reads none.)"""
    from resnet_detect.segmentation import data as segmentation_data
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in sorted((data / "semantic/train").glob("*.png")):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(masks / path.name), np.full_like(mask, 9))  # no class 9: every one
    args = [str(CONFIG), *overrides(data), f"data.train.mask_dir={masks}", "data.num_workers=1",
            "train.max_iter=2"]
    with pytest.raises(DatasetError, match=rf"^data.train: {len(list(masks.iterdir()))} of "
                                           rf"\d+ masks are wrong:\n  mask .* has class ids "
                                           rf"\[9\] outside the 7 declared"):
        load_tool("train").main([*args, f"train.output_dir={tmp_path / 'sampled'}"])
    monkeypatch.setattr(segmentation_data, "MASK_SAMPLE", 0)
    with pytest.raises(DatasetError, match="has class ids \\[9\\] outside the 7 declared"):
        load_tool("train").main([*args, f"train.output_dir={tmp_path / 'run'}"])
    stopped = [line for line in (tmp_path / "run/log.txt").read_text().splitlines()
               if "training stopped: " in line]
    assert len(stopped) == 1 and stopped[0].split("training stopped: ")[1].startswith(
        f"DatasetError: mask {masks}{os.sep}"), stopped
    assert "has class ids [9] outside the 7 declared classes" in stopped[0]


def test_demo_draws_the_overlay_at_image_size(trained: tuple[Path, dict], data: Path,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    image = data / "images/val/000000.jpg"
    monkeypatch.setattr(predictor, "LARGE_IMAGE_PIXELS", 100)  # "a photo"
    with caplog.at_level(logging.WARNING):
        load_tool("demo").main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                                "--input", str(image), "--output", str(tmp_path / "demo"),
                                *overrides(data)])
    drawn = cv2.imread(str(tmp_path / "demo/000000.jpg"))
    assert drawn is not None and drawn.shape[:2] == cv2.imread(str(image)).shape[:2]
    height, width = drawn.shape[:2]
    assert f"a {width}x{height} image runs whole (test.max_size is null)" in caplog.text
    caplog.clear()  # sliding windows do not run it whole
    with caplog.at_level(logging.INFO):
        load_tool("demo").main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                                "--input", str(image), "--output", str(tmp_path / "windows"),
                                *overrides(data), "test.window=[48,48]", "--min-score", "0.9"])
    assert "runs whole" not in caplog.text
    # a pass per window: said, as detection's demo says its views (it said nothing)
    assert "inference: scales [" in caplog.text and ", windows [48, 48] at stride [32, 32]" \
        in caplog.text
    # (was ignored without a word)
    assert ("--min-score 0.9 has no effect: a sem_seg model draws every pixel's class"
            in caplog.text)


def test_demo_saves_each_class_map_as_a_png(trained: tuple[Path, dict], data: Path,
                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--save-json: DIR/predictions/<name>.png (a video's frame by frame) hold the
    Predictor's class maps, DIR/classes.json the names of their ids (it said "and their
    JSON", which segmentation does not write)."""
    images = sorted((data / "images/val").iterdir())[:2]
    frames = write_video(images, tmp_path / "clip.avi")
    weights = str(trained[0] / "model_final.pth")
    out = tmp_path / "demo"
    load_tool("demo").main([str(CONFIG), "--weights", weights, "--input", str(images[0]),
                            str(tmp_path / "clip.avi"), "--output", str(out), "--save-json",
                            *overrides(data)])
    assert json.loads((out / "classes.json").read_text()) == CLASSES
    assert (f"wrote 1 picture(s) and 1 video(s) and their class maps (predictions/, "
            f"classes.json) to {out}\n"
            in capsys.readouterr().out)
    predict = segmentation.Predictor(str(CONFIG), weights=weights, overrides=overrides(data))
    saved = [(out / "predictions/000000.png", read_rgb(images[0]))] + [
        (out / f"predictions/clip/{i:06d}.png", frame) for i, frame in enumerate(frames)]
    assert sorted(p.relative_to(out).as_posix() for p in (out / "predictions").rglob("*.*")) \
        == [p.relative_to(out).as_posix() for p, _ in saved]
    for path, image in saved:
        written = np.asarray(Image.open(path))
        assert written.dtype == np.uint8
        np.testing.assert_array_equal(written, predict(image)["mask"])
    # a shorter video into the same folder: its maps replace the earlier ones (frame 1 of the
    # longer video stayed beside them, as one stopped partway left a mixture of two runs)
    (tmp_path / "short").mkdir()
    write_video(images[:1], tmp_path / "short" / "clip.avi")
    load_tool("demo").main([str(CONFIG), "--weights", weights, "--input",
                            str(tmp_path / "short/clip.avi"), "--output", str(out), "--save-json",
                            *overrides(data)])
    assert sorted(p.name for p in (out / "predictions/clip").iterdir()) == ["000000.png"]
    assert not list((out / "predictions").glob(".*"))


def test_demo_class_maps_of_awkward_names_meet_no_other_file(
        trained: tuple[Path, dict], data: Path, tmp_path: Path) -> None:
    """An input folder holding predictions/a.png drew its picture over a.jpg's class map;
    clip.mp4 beside clip/000000.png (ffmpeg's frames) wrote the video's frame 0 map over the
    image's."""
    images = sorted((data / "images/val").iterdir())[:2]
    inputs = tmp_path / "S"
    (inputs / "predictions").mkdir(parents=True)
    (inputs / "clip").mkdir()
    shutil.copy(images[0], inputs / "a.jpg")
    shutil.copy(images[1], inputs / "predictions/a.png")
    shutil.copy(images[1], inputs / "clip/000000.png")
    frames = write_video(images, inputs / "clip.avi")
    weights = str(trained[0] / "model_final.pth")
    out = tmp_path / "demo"
    load_tool("demo").main([str(CONFIG), "--weights", weights, "--input", str(inputs),
                            "--output", str(out), "--save-json", *overrides(data)])
    predict = segmentation.Predictor(str(CONFIG), weights=weights, overrides=overrides(data))
    expected = {"predictions/a.png": read_rgb(inputs / "a.jpg"),
                "predictions/predictions-2/a.png": read_rgb(inputs / "predictions/a.png"),
                "predictions/clip/000000.png": read_rgb(inputs / "clip/000000.png"),
                **{f"predictions/clip-2/{i:06d}.png": f for i, f in enumerate(frames)}}
    assert sorted(p.relative_to(out).as_posix() for p in (out / "predictions").rglob("*.png")) \
        == sorted(expected)
    for name, image in expected.items():
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)),
                                      predict(image)["mask"])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")
                  if p.parts[len(out.parts)] != "predictions") == [
        "a.jpg", "classes.json", "clip-2.mp4", "clip/000000.png", "predictions-2/a.png"]


def test_training_evaluates_with_the_configs_test_scales(data: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    evaluate = segmentation.evaluate_model

    def recording(model, loader, evaluator, **kwargs):
        seen.append(kwargs.get("tta"))
        return evaluate(model, loader, evaluator, **kwargs)

    monkeypatch.setattr(training, "evaluate_model", recording)
    load_tool("train").main([str(CONFIG), *overrides(data), "train.max_iter=1",
                             f"train.output_dir={tmp_path}", "test.flip=true"])
    assert len(seen) == 1 and seen[0] is not None
    assert seen[0].scales == (0.5,) and seen[0].flip


def test_a_data_source_given_on_the_command_line_replaces_the_files(
        data: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the config file reads class-id PNG folders and names its classes; the user points the
    # train split at COCO instances instead
    coco = [f"data.train.ann_file={data}/coco/train.json",
            f"data.train.img_dir={data}/images/train"]
    _, cfg = load_task_config(CONFIG, coco)
    assert cfg.data.train.mask_dir is None and cfg.data.class_names is None
    assert cfg.data.train.ann_file == f"{data}/coco/train.json"
    assert cfg.data.val.mask_dir == "datasets/synthetic/semantic/val"  # not given: kept
    assert "data.train.ann_file given on the command line: using it instead of " \
           "data.train.mask_dir=datasets/synthetic/semantic/train" in caplog.text
    assert "data.class_names=datasets/synthetic/semantic/classes.json of the config " \
           "dropped" in caplog.text
    assert build_dataset(cfg, "train").class_names == CLASSES
    # both sources given on the command line: still the clear error, naming both
    _, both = load_task_config(CONFIG, [*coco, "data.train.mask_dir=x"])
    with pytest.raises(ValueError, match="data.train needs img_dir and exactly one of ann_file"):
        build_dataset(both, "train")
    # class names given with the COCO source are kept (and checked against the COCO file)
    _, named = load_task_config(CONFIG, [*coco, f"data.class_names={CLASSES}".replace(" ", "")])
    assert list(named.data.class_names) == CLASSES


def test_exported_onnx_scores_the_same_miou_and_refuses_what_it_cannot_run(
        trained: tuple[Path, dict], data: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """tools/export.py -> tools/eval.py and tools/demo.py with --weights DIR/model.onnx, at the
    config's test scale (0.5), which the graph applies itself."""
    export = tmp_path / "export"
    load_tool("export").main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                              "--output", str(export), *overrides(data)])
    # what the weights were trained with, for an evaluation of the graph to compare
    assert json.loads((export / "export.json").read_text())["reduce_zero_label"] is False
    with caplog.at_level(logging.WARNING):
        load_tool("eval").main([str(CONFIG), "--weights", str(export / "model.onnx"), "--output",
                                str(tmp_path / "reduced"), *overrides(data),
                                "data.reduce_zero_label=true"])
    assert (f"{export / 'model.onnx'} was trained on masks read with data.reduce_zero_label="
            f"false, these are read with true") in caplog.text
    caplog.clear()
    metrics = {name: load_tool("eval").main([str(CONFIG), "--weights", str(weights), "--output",
                                             str(tmp_path / name), *overrides(data)])["sem_seg"]
               for name, weights in (("pth", trained[0] / "model_final.pth"),
                                     ("onnx", export / "model.onnx"))}
    assert metrics["onnx"]["mIoU"] == pytest.approx(metrics["pth"]["mIoU"], abs=0.1)
    assert metrics["onnx"]["pixel_acc"] == pytest.approx(metrics["pth"]["pixel_acc"], abs=0.1)
    assert json.loads((tmp_path / "onnx/metrics.json").read_text())["exported_from"][
        "weights"] == str(trained[0] / "model_final.pth")  # which checkpoint was scored
    image = data / "images/val/000001.jpg"
    load_tool("demo").main([str(CONFIG), "--weights", str(export), "--input", str(image),
                            "--output", str(tmp_path / "demo"), *overrides(data)])
    assert cv2.imread(str(tmp_path / "demo/000001.jpg")).shape == cv2.imread(str(image)).shape
    with pytest.raises(ValueError, match=r"runs one test scale, 0.5, with test.max_size null, "
                                         r"without flip or windows; the config asks for "
                                         r"test.scales=\[0.5\] test.flip=true test.window=null"):
        load_tool("eval").main([str(CONFIG), "--weights", str(export), "--output",
                                str(tmp_path / "x"), *overrides(data), "test.flip=true"])
    # another single scale and cap: the graph's, named (as for a detector's resize)
    # (the model.* overrides it was exported with, recorded in export.json, are not named)
    with caplog.at_level("WARNING", logger="resnet_detect.segmentation.predictor"):
        scaled = load_tool("eval").main([str(CONFIG), "--weights", str(export), "--output",
                                         str(tmp_path / "x"), *overrides(data),
                                         "test.scales=[1.0]", "test.max_size=64",
                                         "model.aux_head.channels=4"])
    assert (f"the exported graph {export} runs as it was exported, not as the config says: "
            f"test.scales [0.5] (config: [1.0]); test.max_size null (config: 64); "
            f"model.aux_head.channels not applied; export again with the "
            f"settings wanted") in caplog.text
    assert scaled["sem_seg"]["mIoU"] == metrics["onnx"]["mIoU"]
    with pytest.raises(ValueError, match=r"one test scale without flip or windows; .* asks for "
                                         r"test.scales=\[0.5,1.0\] test.flip=false "
                                         r"test.window=null"):
        load_tool("export").main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                                  "--output", str(tmp_path / "x"), *overrides(data),
                                  "test.scales=[0.5,1.0]"])
    other = (data / "semantic/other.json")
    other.write_text(json.dumps(["sky", *CLASSES[1:]]))
    with pytest.raises(ValueError, match=r"model.onnx's own metadata names the classes "
                                         r"\['background'.*"
                                         r"data.class_names=.*other.json has \['sky'"):
        load_tool("eval").main([str(CONFIG), "--weights", str(export), "--output",
                                str(tmp_path / "x"), *overrides(data), f"data.class_names={other}"])


def test_weights_without_class_names_export_with_the_configs_and_score_the_same(
        trained: tuple[Path, dict], data: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    """A bare state dict (torchvision's DeepLabV3 / FCN weights, a hand-saved one) names no
    classes: the export takes data.class_names, and tools/eval.py scores it."""
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(trained[0] / "model_final.pth", weights_only=True)["model"], bare)
    export = tmp_path / "export"
    load_tool("export").main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                              "--output", str(export), *overrides(data)])
    assert "in place of" not in capsys.readouterr().out
    load_tool("export").main([str(CONFIG), "--weights", str(bare), "--output", str(export),
                              *overrides(data)])  # the export there is replaced, and said so
    assert f"wrote {export / 'model.onnx'} and export.json in place of the export that was " \
        f"there (a sem_seg export, of {trained[0] / 'model_final.pth'}): " \
        in capsys.readouterr().out  # (what it was: said since export.json records it)
    metadata = json.loads((export / "export.json").read_text())
    assert metadata["class_names"] == CLASSES
    unnamed = [o for o in overrides(data) if not o.startswith("data.class_names=")]
    with caplog.at_level(logging.WARNING):
        load_tool("export").main([str(CONFIG), "--weights", str(bare), "--output",
                                  str(tmp_path / "unnamed"), *unnamed, "data.class_names=null"])
    assert "bare.pth names no classes and data.class_names is not set: the export calls them " \
        "class_0, class_1, class_2..." in caplog.text
    metrics = {name: load_tool("eval").main([str(CONFIG), "--weights", str(weights), "--output",
                                             str(tmp_path / name), *overrides(data)])["sem_seg"]
               for name, weights in (("pth", bare), ("onnx", export))}
    assert metrics["onnx"]["mIoU"] == pytest.approx(metrics["pth"]["mIoU"], abs=0.1)
    assert list(metrics["pth"]["per_class_iou"]) == CLASSES  # were class_0.. (the weights')
    six = tmp_path / "six.json"
    six.write_text(json.dumps(CLASSES[:6]))
    with pytest.raises(ValueError, match=r"the weights .*bare.pth have 7 classes, "
                                         r"data.class_names names 6"):  # named model.num_classes
        load_tool("eval").main([str(CONFIG), "--weights", str(bare), "--output",
                                str(tmp_path / "six"), *overrides(data),
                                f"data.class_names={six}"])
    rewrite_export_metadata(export / "model.onnx", {**metadata, "class_names": ["a"]})
    with pytest.raises(ValueError, match=r"export/model.onnx's own metadata names 1 classes for "
                                         r"a model of 7"):
        load_tool("eval").main([str(CONFIG), "--weights", str(export), "--output",
                                str(tmp_path / "x"), *overrides(data)])


def test_eval_saves_each_images_class_map_that_it_scored(
        trained: tuple[Path, dict], data: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """--save-predictions (mmsegmentation's format_only): one uint8 PNG per val image, from
    which the printed mIoU follows (recomputed here from the files and the val masks)."""
    out, _ = trained
    metrics = load_tool("eval").main([str(CONFIG), "--weights", str(out / "model_final.pth"),
                                      "--output", str(tmp_path), "--save-predictions",
                                      "--confusion-matrix", *overrides(data)])["sem_seg"]
    images = sorted((data / "images/val").glob("*.jpg"))
    saved = sorted((tmp_path / "predictions").iterdir())
    assert [p.name for p in saved] == [f"{p.stem}.png" for p in images]
    confusion = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    for path in saved:
        pred = np.asarray(Image.open(path))
        truth = np.asarray(Image.open(data / "semantic/val" / path.name))
        assert pred.dtype == np.uint8 and pred.shape == truth.shape and pred.max() < len(CLASSES)
        scored = truth != 255
        np.add.at(confusion, (truth[scored], pred[scored]), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    assert metrics["mIoU"] == pytest.approx(100 * np.mean(tp[union > 0] / union[union > 0]))
    # --confusion-matrix (mmsegmentation's confusion_matrix.py): these pixel counts
    with (tmp_path / "confusion_matrix.csv").open(newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == ["ground truth \\ predicted", *CLASSES]
    assert [row[0] for row in written[1:]] == list(CLASSES)
    np.testing.assert_array_equal(np.array([row[1:] for row in written[1:]], dtype=np.int64),
                                  confusion)
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    off = confusion - np.diag(np.diag(confusion))
    i, j = np.unravel_index(off.argmax(), off.shape)
    assert (f"  {CLASSES[i]} predicted as {CLASSES[j]}: {off[i, j]} pixels "
            f"({100 * off[i, j] / confusion[i].sum():.1f}% of {CLASSES[i]}'s)"
            in capsys.readouterr().out)  # the largest confusion named
    # images without labels (a test set): predicted and written, nothing scored; a folder
    # (no mask_dir) or a COCO file without annotations, which scored all-background before
    info = {"images": [{"id": i, "file_name": p.name, "height": 96, "width": 128}
                       for i, p in enumerate(images)],
            "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES[1:], 1)]}
    (tmp_path / "test_dev.json").write_text(json.dumps(info))
    for name, source in (("folder", ["data.val.mask_dir=null"]),
                         ("coco", ["data.val.mask_dir=null",
                                   f"data.val.ann_file={tmp_path / 'test_dev.json'}"])):
        args = [str(CONFIG), "--weights", str(out / "model_final.pth"), *overrides(data),
                *source]
        unscored = load_tool("eval").main([*args, "--output", str(tmp_path / name),
                                           "--save-predictions"])
        assert unscored["sem_seg"] is None and unscored["images"]["images"] == len(images)
        for path in saved:  # the same maps as the labelled run's
            assert (np.asarray(Image.open(tmp_path / name / "predictions" / path.name))
                    == np.asarray(Image.open(path))).all()
        with pytest.raises(ValueError, match="nothing to score|needs img_dir and exactly one"):
            load_tool("eval").main([*args, "--output", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="test_dev.json has no annotations: nothing to train"):
        load_tool("train").main([str(CONFIG), *overrides(data), "data.train.mask_dir=null",
                                 f"data.train.ann_file={tmp_path / 'test_dev.json'}",
                                 f"train.output_dir={tmp_path / 'run'}", "train.max_iter=1"])
    with pytest.raises(ValueError, match="test_dev.json has no annotations to score the "
                                         "training's evaluations"):
        load_tool("train").main([str(CONFIG), *overrides(data), "data.val.mask_dir=null",
                                 f"data.val.ann_file={tmp_path / 'test_dev.json'}",
                                 f"train.output_dir={tmp_path / 'run'}", "train.max_iter=1"])
    with pytest.raises(ValueError, match="--save-predictions writes sem_seg class maps"):
        load_tool("eval").main([str(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"),
                                "--weights", "w.pth", "--output", str(tmp_path / "det"),
                                "--save-predictions"])
    # again into the same folder on a smaller split: its maps alone (the earlier run's stayed,
    # mixed with these), and a run that fails partway leaves the complete earlier set
    few = tmp_path / "few"
    few.mkdir()
    for path in images[:2]:
        (few / path.name).write_bytes(path.read_bytes())
    again = [str(CONFIG), "--weights", str(out / "model_final.pth"), "--output", str(tmp_path),
             "--save-predictions", *overrides(data), f"data.val.img_dir={few}"]
    load_tool("eval").main(again)
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == [
        f"{p.stem}.png" for p in images[:2]]
    assert not list(tmp_path.glob("predictions.*"))
    written = {p.name: p.read_bytes() for p in (tmp_path / "predictions").iterdir()}
    calls = []

    def disk_full_after_one_file(label_map: np.ndarray, path: Path) -> None:
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"a map of other weights")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="No space left"):
        patch.setattr(training, "write_label_map", disk_full_after_one_file)
        load_tool("eval").main(again[:-1])
    assert len(calls) == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "predictions").iterdir()} == written
    assert not list(tmp_path.glob("predictions.*"))  # the failed run's maps are gone too

    def stopped_after_one_file(label_map: np.ndarray, path: Path) -> None:  # Ctrl-C, SIGTERM
        calls.append(path)
        if len(calls) > 1:
            raise KeyboardInterrupt
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"a map of other weights")

    calls.clear()
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(training, "write_label_map", stopped_after_one_file)
        load_tool("eval").main(again[:-1])
    assert len(calls) == 2 and not list(tmp_path.glob("predictions.*"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "predictions").iterdir()} == written
    # evaluated again without the flags: the earlier maps and matrix (of the weights the file
    # held then) went on lying beside the new metrics
    capsys.readouterr()
    load_tool("eval").main([a for a in again if a != "--save-predictions"])
    assert not any((tmp_path / name).exists() for name in (
        "predictions", "confusion_matrix.csv", "confusion_matrix.png"))
    assert (f"removed the earlier evaluation's predictions from {tmp_path}: this evaluation "
            f"did not make them" in capsys.readouterr().out)


def test_masks_whose_0_is_unlabelled_score_as_the_same_masks_without_it(
        trained: tuple[Path, dict], data: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """data.reduce_zero_label (ADE20K's masks): the val masks with every class id raised by one
    and their ignored pixels 0 or 255 give the run's own mIoU, and the saved predictions are
    the plain run's plus one (mmsegmentation's format_only under reduce_zero_label)."""
    out, _ = trained
    plain_masks, shifted = tmp_path / "plain_masks", tmp_path / "shifted"
    plain_masks.mkdir()
    shifted.mkdir()
    for path in sorted((data / "semantic/val").glob("*.png")):
        mask = np.asarray(Image.open(path)).astype(np.int64)
        mask[:12] = 255  # not scored: 0 in the shifted masks, or 255 in their first rows
        raised = np.where(mask == 255, 0, mask + 1)
        raised[:4] = 255
        Image.fromarray(mask.astype(np.uint8), mode="L").save(plain_masks / path.name)
        Image.fromarray(raised.astype(np.uint8), mode="L").save(shifted / path.name)
    args = [str(CONFIG), "--weights", str(out / "model_final.pth"), "--save-predictions",
            *overrides(data)]
    with caplog.at_level(logging.WARNING):
        plain = load_tool("eval").main([*args, "--output", str(tmp_path / "plain"),
                                        f"data.val.mask_dir={plain_masks}"])["sem_seg"]
    assert "reduce_zero_label" not in caplog.text  # read as trained: nothing said
    with caplog.at_level(logging.WARNING):
        reduced = load_tool("eval").main([*args, "--output", str(tmp_path / "reduced"),
                                          f"data.val.mask_dir={shifted}",
                                          "data.reduce_zero_label=true"])["sem_seg"]
    assert reduced == plain
    # masks read otherwise than the training's (right here: these are shifted), said: where
    # they are labelled as the training's, every id is one off and nothing else says so
    assert (f"{out / 'model_final.pth'} was trained on masks read with "
            f"data.reduce_zero_label=false, these are read with true: where they are labelled "
            f"as its training masks were, every class id is one off (and the mIoU wrong); then "
            f"set data.reduce_zero_label=false") in caplog.text
    with pytest.raises(ValueError, match=r"has class ids \[7\] outside the 7 declared classes "
                                         r".*\nmasks of the values 0..7 are either 8 classes "
                                         r".* or 7 classes with 0 unlabelled, neither trained "
                                         r"on nor scored \(ADE20K's: data.reduce_zero_label: "
                                         r"true\)"):
        load_tool("eval").main([*args, "--output", str(tmp_path / "x"),
                                f"data.val.mask_dir={shifted}"])
    saved = sorted((tmp_path / "plain/predictions").iterdir())
    assert saved
    for path in saved:
        assert (np.asarray(Image.open(tmp_path / "reduced/predictions" / path.name)).astype(int)
                == np.asarray(Image.open(path)).astype(int) + 1).all()


def test_saved_predictions_stay_in_their_folder_and_never_overwrite_each_other(
        tmp_path: Path) -> None:
    """Two processes of a distributed evaluation, each with its share of the images: each
    named a.png the first it met of a.jpg and a.png (one overwrote the other), and a.jpg's
    map was a.png."""
    names = [str(tmp_path / "img" / n)
             for n in ("a.jpg", "a.png", "sub/b.jpg", "sub/../../elsewhere/c.jpg")]
    for share in (names[1::2], names[0::2]):
        save = training.prediction_writer(tmp_path / "out", tmp_path / "img", names)
        for name in share:
            save({"file_name": name}, torch.full((2, 3), names.index(name)))
    written = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path).rglob("*.png"))
    assert written == ["out/a.jpg.png", "out/a.png.png", "out/c.png", "out/sub/b.png"]
    for name, value in (("a.jpg.png", 0), ("a.png.png", 1), ("sub/b.png", 2), ("c.png", 3)):
        assert np.asarray(Image.open(tmp_path / "out" / name)).tolist() == [[value] * 3] * 2
    # symlinked sub-folders keep their names (followed, two f1.jpg outside img_dir met on
    # f1.jpg.png); names still meeting after their suffix take -2
    for cam in ("cam1", "cam2"):
        (tmp_path / "store" / cam).mkdir(parents=True)
        (tmp_path / "val").mkdir(exist_ok=True)
        (tmp_path / "val" / cam).symlink_to(tmp_path / "store" / cam)
    names = [str(tmp_path / n) for n in ("val/cam1/f1.jpg", "val/cam2/f1.jpg", "x/a.jpg",
                                         "y/a.png", "z/a.jpg.png")]
    save = training.prediction_writer(tmp_path / "pred", tmp_path / "val", names)
    for name in names:
        save({"file_name": name}, torch.full((2, 3), names.index(name)))
    written = sorted(str(p.relative_to(tmp_path / "pred")) for p in (tmp_path / "pred").rglob("*"))
    assert written == ["a.jpg-2.png", "a.jpg.png", "a.png.png", "cam1", "cam1/f1.png", "cam2",
                       "cam2/f1.png"]


def test_eval_says_what_it_could_not_score(trained: tuple[Path, dict], data: Path,
                                           tmp_path: Path, capsys: pytest.CaptureFixture,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """An unreadable val image was left out without a word (exit 0, a mIoU of the others); val
    masks without a scored pixel crashed the printout after metrics.json was written."""
    out, _ = trained
    names = sorted(p.stem for p in (data / "images/val").glob("*.jpg"))[:3]
    for folder, blank in (("one_unreadable", False), ("all_ignored", True)):
        (tmp_path / folder / "img").mkdir(parents=True)
        (tmp_path / folder / "mask").mkdir()
        for name in names:
            image = (data / "images/val" / f"{name}.jpg").read_bytes()
            (tmp_path / folder / "img" / f"{name}.jpg").write_bytes(image)
            mask = cv2.imread(str(data / "semantic/val" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(tmp_path / folder / "mask" / f"{name}.png"), mask * 0 + 255 if blank
                        else mask)
    bad = tmp_path / "one_unreadable/img" / f"{names[1]}.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    for folder in ("one_unreadable", "all_ignored"):
        with caplog.at_level(logging.WARNING):
            load_tool("eval").main([str(CONFIG), "--weights", str(out / "model_final.pth"),
                                    "--output", str(tmp_path / folder / "eval"), *overrides(data),
                                    f"data.val.img_dir={tmp_path / folder / 'img'}",
                                    f"data.val.mask_dir={tmp_path / folder / 'mask'}"])
    first = json.loads((tmp_path / "one_unreadable/eval/metrics.json").read_text())
    assert first["images"] == {"images": 3, "unreadable": 1}
    assert ("val: 1 of 3 images could not be read (the warnings above name them): the metrics "
            "are those of the others") in caplog.text
    blank = json.loads((tmp_path / "all_ignored/eval/metrics.json").read_text())
    assert blank["sem_seg"]["mIoU"] is None and blank["images"]["unreadable"] == 0
    assert "mIoU = n/a  pixel_acc = n/a" in capsys.readouterr().out
    assert f"no pixel of {tmp_path / 'all_ignored/mask'} was scored: every val pixel is 255" \
        in caplog.text
    # no image readable: exit code 2, and the earlier predictions and metrics stay (it wrote
    # an empty predictions/ over them, and exit 0)
    run = ["--output", str(tmp_path / "one_unreadable/eval"), *overrides(data),
           f"data.val.img_dir={tmp_path / 'one_unreadable/img'}",
           f"data.val.mask_dir={tmp_path / 'one_unreadable/mask'}", "--save-predictions"]
    load_tool("eval").main([str(CONFIG), "--weights", str(out / "model_final.pth"), *run])
    predictions = sorted((tmp_path / "one_unreadable/eval/predictions").iterdir())
    assert len(predictions) == 2
    for image in (tmp_path / "one_unreadable/img").iterdir():
        image.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"^val: none of the 3 images could be read \(the "
                                           r"warnings above name them\): nothing was scored$"):
        load_tool("eval").main([str(CONFIG), "--weights", str(out / "model_final.pth"), *run])
    assert sorted((tmp_path / "one_unreadable/eval/predictions").iterdir()) == predictions
    assert json.loads((tmp_path / "one_unreadable/eval/metrics.json").read_text()) == first
    assert not list((tmp_path / "one_unreadable/eval").glob("predictions.*"))


PALETTE = [[0, 0, 0], [220, 20, 60], [0, 0, 142], [250, 170, 30], [107, 142, 35],
           [70, 130, 180], [255, 255, 255]]


def test_the_configs_palette_colours_demo_and_browse(trained: tuple[Path, dict], data: Path,
                                                     tmp_path: Path) -> None:
    """data.palette (mmsegmentation's METAINFO palette) colours the overlays (they took
    automatic colours only); a training writes the colours into its config, not the file's
    path; a palette of another length is refused before training."""
    from resnet_detect.engine.visualize import draw_segmentation
    from resnet_detect.engine.visualize import palette as auto_colours
    from resnet_detect.segmentation.browse import browse_split
    from resnet_detect.segmentation.data import resolve_palette
    palette_file = tmp_path / "palette.json"
    palette_file.write_text(json.dumps(PALETTE))
    render = predictor.build_renderer(CONFIG, trained[0] / "model_final.pth",
                                      [*overrides(data), f"data.palette={palette_file}"])
    image = np.full((80, 200, 3), 100, dtype=np.uint8)
    mask = np.zeros((80, 200), dtype=np.int64)
    mask[:, 100:] = 2  # "square"
    drawn = render.draw(image, mask)
    expected = (0.5 * np.asarray(PALETTE[2]) + 0.5 * 100).astype(np.uint8)
    assert (drawn[60:, 100:] == expected).all()  # (the legend is in the top-left corner)
    _, cfg = load_task_config(CONFIG, [*overrides(data), f"data.palette={palette_file}"])
    dataset, draw = browse_split(cfg, "val")
    sample = dataset[0]
    image, classes = sample["image"].permute(1, 2, 0).numpy(), sample["gt_sem_seg"].numpy()
    # (the overlay itself: draw_segmentation's tests; here, that it gets these colours)
    assert (draw(sample) == draw_segmentation(image, classes, CLASSES, np.uint8(PALETTE),
                                              ignore_index=255, legend_beside=True)).all()
    assert (draw(sample) != draw_segmentation(image, classes, CLASSES, auto_colours(7),
                                              ignore_index=255, legend_beside=True)).any()
    task = training.SemSegTask()
    task.prepare(cfg)
    assert cfg.data.palette == PALETTE  # the colours, not the path
    with pytest.raises(segmentation.data.ConfigError,
                       match="data.palette has 6 colours for the 7 classes"):
        _, short = load_task_config(CONFIG, [*overrides(data),
                                             f"data.palette={json.dumps(PALETTE[:6])}"])
        training.SemSegTask().prepare(short)
    with pytest.raises(segmentation.data.ConfigError, match=r"data.palette must be a list of "
                                                            r"\[r, g, b\] colours, whole numbers "
                                                            r"0..255, one per class, got"):
        resolve_palette([[0, 0, 300]], 1)
    with pytest.raises(segmentation.data.ConfigError, match=r"got \[\[0.86, 0.08, 0.24\]\] "
                                                            r"\(colours as fractions 0..1: "
                                                            r"times 255\)"):
        resolve_palette([[0.86, 0.08, 0.24]], 1)  # (matplotlib's: they were all black)
    assert resolve_palette(None, 7) is None
    # a missing palette file: before the data is read; not a reason to refuse an evaluation
    _, missing = load_task_config(CONFIG, [*overrides(data), f"data.train.img_dir={tmp_path}/no",
                                           f"data.palette={tmp_path / 'no.json'}"])
    with pytest.raises(FileNotFoundError, match="data.palette file not found"):
        training.SemSegTask().prepare(missing)
    load_tool("eval").main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                            "--output", str(tmp_path / "eval"), *overrides(data),
                            f"data.palette={tmp_path / 'no.json'}"])


def test_an_export_records_the_palette_for_the_demo(trained: tuple[Path, dict], data: Path,
                                                     tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """data.palette goes into export.json: a demo of the graph with a config that has none
    draws the trained colours (they were automatic); a config's own palette still wins, and a
    palette that does not fit the classes is warned of and not recorded, not refused."""
    export = tmp_path / "export"
    load_tool("export").main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                              "--output", str(export), *overrides(data),
                              f"data.palette={json.dumps(PALETTE)}"])
    assert json.loads((export / "export.json").read_text())["palette"] == PALETTE
    image = np.full((80, 200, 3), 100, dtype=np.uint8)
    mask = np.zeros((80, 200), dtype=np.int64)
    mask[:, 100:] = 2  # "square"
    drawn = predictor.build_renderer(CONFIG, export, overrides(data)).draw(image, mask)
    assert (drawn[60:, 100:] == (0.5 * np.asarray(PALETTE[2]) + 50).astype(np.uint8)).all()
    own = [[c, 255 - c, 7] for c in range(0, 70, 10)]
    drawn = predictor.build_renderer(CONFIG, export, [*overrides(data),
                                                      f"data.palette={json.dumps(own)}"]
                                     ).draw(image, mask)
    assert (drawn[60:, 100:] == (0.5 * np.asarray(own[2]) + 50).astype(np.uint8)).all()
    short = tmp_path / "short"
    with caplog.at_level(logging.WARNING):
        load_tool("export").main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                                  "--output", str(short), *overrides(data),
                                  f"data.palette={json.dumps(PALETTE[:6])}"])
    assert ("data.palette has 6 colours for the 7 classes (one per class, index = class id); "
            "the export records no palette") in [r.getMessage() for r in caplog.records
                                                 if r.levelno >= logging.WARNING]
    assert "palette" not in json.loads((short / "export.json").read_text())
