"""Mask R-CNN through tools/train.py, tools/eval.py, tools/demo.py and detection.Predictor.

Tiny synthetic scenes (96x128, polygon masks), a ResNet-18 FPN Mask R-CNN with random
weights, 2 training steps; the numbers checked are the plumbing (segm metrics equal to
pycocotools on the written RLE results, masks at input size, masks drawn), not accuracy.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnet_detect.detection import Predictor
from resnet_detect.engine.data import UnreadableImageError
from tests.export_metadata import rewrite_export_metadata
from resnet_detect.engine.visualize import draw_detections
from tests.tools.test_train_eval_demo import (ROOT, assert_json_holds, data, data_overrides,
                                              load_tool, read_rgb)

CONFIG = ROOT / "configs/synthetic/mask_rcnn_R_18_FPN.yaml"
SMALL_HEAD = ["model.roi_heads.mask_conv_dims=[32,32]"]
# fixtures imported to apply here too: the autouse log clean-up and the tiny synthetic set
__all__ = ["data"]


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    result = load_tool("train").main([str(CONFIG), *data_overrides(data), *SMALL_HEAD,
                                      "train.max_iter=2", f"train.output_dir={out}"])
    return out, result


def test_train_writes_a_mask_rcnn_checkpoint(trained: tuple[Path, dict]) -> None:
    out, result = trained
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["provenance"]["arch"] == "mask_rcnn_resnet18_fpn"
    assert ckpt["provenance"]["config"]["model"]["mask_on"] is True
    # 6 classes: one 28x28 mask channel each, no background channel
    assert ckpt["model"]["roi_heads.mask_head.predictor.weight"].shape == (6, 32, 1, 1)
    assert set(result["all_metrics"]["segm"]) >= {"AP", "AP50", "AP75"}
    assert {"AP", "AP50"} <= set(result["metrics"])


def test_eval_reports_segm_beside_bbox(trained: tuple[Path, dict], data: Path,
                                       tmp_path: Path) -> None:
    out = tmp_path / "eval"
    load_tool("eval").main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                            "--output", str(out), *data_overrides(data), *SMALL_HEAD,
                            "model.roi_heads.score_thresh=0.0"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm", "images", "weights"}
    results = json.loads((out / "coco_instances_results.json").read_text())
    assert results and all(r["segmentation"]["size"] == [96, 128] for r in results)
    gt = COCO(str(data / "coco/val.json"))
    for iou_type in ("bbox", "segm"):
        # segm results without their boxes: pycocotools' loadRes would otherwise size them
        # (APs/APm/APl) by box area instead of mask area
        drop = "segmentation" if iou_type == "bbox" else "bbox"
        ev = COCOeval(gt, gt.loadRes([{k: v for k, v in r.items() if k != drop}
                                      for r in results]), iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
        for i, key in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
            expected = ev.stats[i] * 100 if ev.stats[i] >= 0 else None
            assert metrics[iou_type][key] == (pytest.approx(expected, abs=1e-9)
                                              if expected is not None else None)
    assert set(metrics["segm"]["per_category"]) == {
        "circle", "square", "triangle", "star", "cross", "ellipse"}


def test_val_objects_without_a_segmentation_are_left_out_of_segm_alone(
        trained: tuple[Path, dict], data: Path, tmp_path: Path) -> None:
    """A val object without `segmentation` (a box-only annotation) is ignored in segm, as
    README says, and scored in bbox: the evaluation runs, its box AP is the full file's."""
    content = json.loads((data / "coco/val.json").read_text())
    del content["annotations"][0]["segmentation"]
    (tmp_path / "box_only.json").write_text(json.dumps(content))
    args = [str(CONFIG), "--weights", str(trained[0] / "model_final.pth"), *data_overrides(data),
            *SMALL_HEAD, "model.roi_heads.score_thresh=0.0"]
    full = load_tool("eval").main([*args, "--output", str(tmp_path / "full")])
    with pytest.warns(RuntimeWarning, match="1 objects without a usable mask are ignored"):
        partial = load_tool("eval").main([*args, "--output", str(tmp_path / "partial"),
                                          f"data.val.ann_file={tmp_path / 'box_only.json'}"])
    assert partial["bbox"] == full["bbox"] and partial["segm"]["AP"] is not None


def test_predictor_masks_at_input_size(trained: tuple[Path, dict]) -> None:
    predictor = Predictor(None, weights=trained[0] / "model_final.pth",
                          overrides=["model.roi_heads.score_thresh=0.0",
                                     "model.roi_heads.mask_threshold=0.3"])
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    out = predictor(image)
    assert len(out["boxes"]) > 0
    assert out["masks"].shape == (len(out["boxes"]), 150, 200) and out["masks"].dtype == bool
    with torch.no_grad():  # the same masks from the model's box-relative probabilities
        resized = cv2.resize(image, (128, 96), interpolation=cv2.INTER_LINEAR)
        ref = predictor.model([torch.from_numpy(resized.transpose(2, 0, 1).copy())],
                              output_sizes=[(150, 200)])[0]
    np.testing.assert_array_equal(out["masks"], ref["masks"].numpy())
    with pytest.raises(ValueError, match=r"have a mask head but model.mask_on is False"):
        Predictor(None, weights=trained[0] / "model_final.pth", overrides=["model.mask_on=false"])


def test_demo_draws_masks(trained: tuple[Path, dict], data: Path, tmp_path: Path) -> None:
    demo = load_tool("demo")
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    mask = np.zeros((1, 40, 60), dtype=bool)
    mask[0, 10:30, 15:45] = True
    det = {"boxes": np.array([[12.0, 8.0, 48.0, 32.0]]), "scores": np.array([0.9]),
           "labels": np.array([3]), "class_names": ["square"], "masks": mask}
    picture = draw_detections(image, det, {3: (200, 0, 50)}, min_score=0.5)
    assert picture[20, 30].tolist() == [150, 50, 75]  # half colour, half image
    assert picture[37, 2].tolist() == [100, 100, 100]  # outside the box, mask and tag
    no_mask = draw_detections(image, {k: v for k, v in det.items() if k != "masks"},
                                   {3: (200, 0, 50)}, min_score=0.5)
    assert no_mask[20, 30].tolist() == [100, 100, 100]
    out = tmp_path / "demo"
    written = demo.main([str(CONFIG), "--weights", str(trained[0] / "model_final.pth"),
                         "--input", str(data / "images/val"), "--output", str(out),
                         "--min-score", "0", "model.roi_heads.score_thresh=0.0", *SMALL_HEAD])
    assert sorted(p.name for p in written) == ["000000.jpg", "000001.jpg", "000002.jpg"]


def test_demo_saves_masks_as_rle(trained: tuple[Path, dict], data: Path,
                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--save-json's "masks": COCO RLEs that decode to the Predictor's masks."""
    image = data / "images/val/000001.jpg"
    weights = str(trained[0] / "model_final.pth")
    load_tool("demo").main([str(CONFIG), "--weights", weights, "--input", str(image),
                            "--output", str(tmp_path), "--min-score", "0", "--save-json",
                            "model.roi_heads.score_thresh=0.0", *SMALL_HEAD])
    # (it said "wrote 1 file(s)" of its two)
    assert f"wrote 1 picture(s) and their JSON to {tmp_path}: " in capsys.readouterr().out
    record = json.loads((tmp_path / "000001.json").read_text())
    expected = Predictor(str(CONFIG), weights=weights,
                         overrides=["model.roi_heads.score_thresh=0.0", *SMALL_HEAD])(
        read_rgb(image))
    assert_json_holds(record, expected)
    assert all(isinstance(rle["counts"], str) and rle["size"] == [96, 128]
               for rle in record["masks"])
    decoded = np.stack([mask_utils.decode(rle) for rle in record["masks"]]).astype(bool)
    assert expected["masks"].any()
    np.testing.assert_array_equal(decoded, expected["masks"])


def test_mask_on_without_segmentation_fails_naming_file(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "no_masks.json"
    content = json.loads((data / "coco/train.json").read_text())
    for ann in content["annotations"]:
        del ann["segmentation"]
    bad.write_text(json.dumps(content))
    first = content["annotations"][0]
    with pytest.raises(ValueError, match=rf"{bad}: \d+ problem.*\n.*annotation id="
                                         rf"{first['id']} .*no 'segmentation'"):
        load_tool("train").main([str(CONFIG), *data_overrides(data), *SMALL_HEAD,
                                 "train.max_iter=1", f"train.output_dir={tmp_path / 'run'}",
                                 f"data.train.ann_file={bad}"])
    assert not (tmp_path / "run" / "model_final.pth").exists()
    # the same in the val file: found before training, not by the evaluation after it
    odd = json.loads((data / "coco/val.json").read_text())
    odd["annotations"][1]["segmentation"] = [[10, 10, 30, 10, 30]]
    (tmp_path / "odd_val.json").write_text(json.dumps(odd))
    with pytest.raises(ValueError, match=rf"odd_val.json: 1 problem.*\n.*annotation id="
                                         rf"{odd['annotations'][1]['id']} .*odd count of numbers "
                                         rf"\(5\), not x, y pairs"):
        load_tool("train").main([str(CONFIG), *data_overrides(data), *SMALL_HEAD,
                                 "train.max_iter=1", f"train.output_dir={tmp_path / 'run'}",
                                 f"data.val.ann_file={tmp_path / 'odd_val.json'}"])
    assert not list((tmp_path / "run").glob("*.pth"))


def _demo_on_an_export_says_why_nothing_was_drawn_and_goes_on_past_a_large_photo(
        args: list[str], export: Path, data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """The export's threshold is 0: --min-score is what drew nothing (the hint said to export
    again). ONNX Runtime failing to allocate the pasted masks of a large photo was a
    traceback naming no file, and the inputs after it were not drawn."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    demo = [*args, "--weights", str(export), "--input", str(data / "images/val/000000.jpg")]
    load_tool("demo").main([*demo, "--output", str(tmp_path / "none"), "--min-score", "1.0"])
    assert "0 detections of score 1.0 or more (a lower --min-score shows weaker ones)" in \
        capsys.readouterr().out
    # a higher threshold given here is named as such (it said to export again)
    load_tool("demo").main([*args, "model.roi_heads.score_thresh=0.999999", *demo[len(args):],
                            "--output", str(tmp_path / "raised")])
    assert ("0 detections of score 0.5 or more (model.roi_heads.score_thresh=0.999999, this "
            "run's config, leaves out the graph's weaker detections; it was exported with 0.0)"
            ) in capsys.readouterr().out
    # a config file's threshold above --min-score: it was applied to the graph's output (a
    # trial: 126 drawn at --min-score 0.01 where the .pth drew 400); --min-score is the
    # threshold, as for the .pth
    high = tmp_path / "high.yaml"
    high.write_text(f"_base_: {args[0]}\nmodel: {{roi_heads: {{score_thresh: 0.999999}}}}\n")
    drawn = []
    assert args[-1] == "model.roi_heads.score_thresh=0.0"  # (the export's: not given here)
    for config in (args[0], str(high)):
        load_tool("demo").main([config, *args[1:-1], *demo[len(args):], "--output",
                                str(tmp_path / "low"), "--min-score", "0.0"])
        drawn.append(re.search(r"(\d+) detections of score 0.0", capsys.readouterr().out)[1])
    assert drawn[0] == drawn[1] != "0"
    # no threshold given: --min-score's own hint (a review: "model.roi_heads.score_thresh=1.0,
    # this run's config, leaves out ..." for the --min-score the demo made the threshold)
    load_tool("demo").main([args[0], *args[1:-1], *demo[len(args):], "--output",
                            str(tmp_path / "none2"), "--min-score", "1.0"])
    assert "0 detections of score 1.0 or more (a lower --min-score shows weaker ones)" in \
        capsys.readouterr().out
    large = tmp_path / "large.jpg"
    cv2.imwrite(str(large), np.full((200, 300, 3), 128, np.uint8))
    real_run = onnxruntime.InferenceSession.run

    def run(session, names, feeds, *rest):  # as ONNX Runtime fails on a 8000x6000 photo
        if feeds["original_size"][0] > 100:
            raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to "
                                   "allocate memory for requested buffer of size 19200000000")
        return real_run(session, names, feeds, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnxruntime.InferenceSession, "run", run)
        with pytest.raises(UnreadableImageError, match=re.escape(
                f"1 of 2 inputs could not be drawn (the others were drawn):\n  {large}: ONNX "
                f"Runtime ran out of memory on a 300x200 image (")) as raised:
            load_tool("demo").main([*demo, str(large), "--output", str(tmp_path / "large")])
    assert "an export with --mask-output box pastes one box at a time" in str(raised.value)
    assert [p.name for p in (tmp_path / "large").iterdir()] == ["000000.jpg"]


def test_exported_onnx_scores_the_same_box_and_mask_ap_and_refuses_other_classes(
        trained: tuple[Path, dict], data: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    """tools/export.py -> tools/eval.py --weights DIR (ONNX Runtime) and tools/demo.py."""
    args = [str(CONFIG), *data_overrides(data), *SMALL_HEAD, "model.roi_heads.score_thresh=0.0"]
    export = tmp_path / "export"
    load_tool("export").main([*args, "--weights", str(trained[0] / "model_final.pth"),
                              "--output", str(export)])
    metrics = {}
    for name, weights in (("pth", trained[0] / "model_final.pth"), ("onnx", export)):
        metrics[name] = load_tool("eval").main([*args, "--weights", str(weights),
                                                "--output", str(tmp_path / name)])
    results = {name: json.loads((tmp_path / name / "coco_instances_results.json").read_text())
               for name in metrics}
    assert len(results["onnx"]) == len(results["pth"]) > 0
    for got, expected in zip(results["onnx"], results["pth"]):  # both image by image, by score
        assert (got["image_id"], got["category_id"]) == (expected["image_id"],
                                                         expected["category_id"])
        np.testing.assert_allclose(got["bbox"], expected["bbox"], atol=0.01)
        assert got["score"] == pytest.approx(expected["score"], abs=1e-4)
    for iou_type in ("bbox", "segm"):
        assert metrics["onnx"][iou_type]["AP"] == pytest.approx(
            metrics["pth"][iou_type]["AP"], abs=0.1)
    # each box's mask out of the graph, pasted by the tools as for the .pth
    load_tool("export").main([*args, "--weights", str(trained[0] / "model_final.pth"),
                              "--output", str(tmp_path / "box"), "--mask-output", "box"])
    box = load_tool("eval").main([*args, "--weights", str(tmp_path / "box"), "--output",
                                  str(tmp_path / "box_eval")])
    assert box["segm"]["AP"] == pytest.approx(metrics["pth"]["segm"]["AP"], abs=0.1)
    assert box["bbox"] == metrics["onnx"]["bbox"]
    written = load_tool("demo").main([*args, "--weights", str(export / "model.onnx"), "--input",
                                      str(data / "images/val/000000.jpg"), "--output",
                                      str(tmp_path / "demo")])
    assert cv2.imread(str(written[0])).shape == (96, 128, 3)
    # the graph's masks under a Faster R-CNN config: refused as for the .pth (was a warning,
    # then mask AP scored)
    with pytest.raises(ValueError, match=rf"the weights {re.escape(str(export))} have a mask "
                                         r"head but model.mask_on is False; use a Mask R-CNN "
                                         r"config"):
        load_tool("eval").main([*args, "--weights", str(export), "--output",
                                str(tmp_path / "faster"), "model.mask_on=false"])
    assert not (tmp_path / "faster" / "metrics.json").exists()
    _demo_on_an_export_says_why_nothing_was_drawn_and_goes_on_past_a_large_photo(
        args, export, data, tmp_path, capsys)
    # an export whose categories are not the evaluation data's: refused, never mislabelled
    meta = json.loads((export / "export.json").read_text())
    assert meta["mask_threshold"] == 0.5  # fixed inside the graph: said beside it
    graph_file = export / "model.onnx"
    meta["class_names"][0] = "dog"
    rewrite_export_metadata(graph_file, meta)
    with pytest.raises(ValueError, match=r"model.onnx's own metadata names the categories "
                                         r".*'dog'.*val.json"):
        load_tool("eval").main([*args, "--weights", str(export), "--output", str(tmp_path / "x")])
    # bare ids as names (what an export of torchvision's weights says): evaluated by id
    meta["class_names"] = [str(c) for c in meta["category_ids"]]
    rewrite_export_metadata(graph_file, meta)
    by_id = load_tool("eval").main([*args, "--weights", str(export), "--output",
                                    str(tmp_path / "by_id")])
    assert by_id["bbox"]["AP"] == metrics["onnx"]["bbox"]["AP"]
    # an export.json of another export beside it (a shared folder): the graph's own is read
    (export / "export.json").write_text(json.dumps({**meta, "class_names": ["dog"] * 6}))
    with caplog.at_level("WARNING", logger="resnet_detect.engine.export"):
        beside = load_tool("eval").main([*args, "--weights", str(export), "--output",
                                         str(tmp_path / "beside")])
    assert beside["bbox"]["AP"] == metrics["onnx"]["bbox"]["AP"]
    assert f"{export / 'export.json'} is not the export of {graph_file}" in caplog.text
    # model.onnx shipped alone
    (export / "export.json").unlink()
    alone = load_tool("eval").main([*args, "--weights", str(graph_file), "--output",
                                    str(tmp_path / "alone")])
    assert alone["bbox"]["AP"] == metrics["onnx"]["bbox"]["AP"]
    # a graph without its own copy (exported before it was written there): export.json is read
    graph = onnx.load(str(graph_file))
    del graph.metadata_props[:]
    onnx.save(graph, str(graph_file))
    with pytest.raises(ValueError, match=r"model.onnx has no export.json beside it, nor a copy "
                                         r"inside it"):
        load_tool("eval").main([*args, "--weights", str(export), "--output", str(tmp_path / "x")])
    (export / "export.json").write_text(json.dumps({**meta, "class_names": ["dog"] * 6}))
    with pytest.raises(ValueError, match=r"export/export.json names the categories .*'dog'"):
        load_tool("eval").main([*args, "--weights", str(export), "--output", str(tmp_path / "x")])
