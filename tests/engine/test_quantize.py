"""INT8 quantization of the ONNX exports (resnet_detect/engine/quantize.py, tools/export.py
--quantize int8) on tiny random-weight models: what the int8 graph holds, how far its outputs
are from the float32 graph's, that calibration is deterministic, and what is refused."""
from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from onnx import numpy_helper

from resnet_detect.backbones import build_classifier, make_provenance, save_checkpoint
from resnet_detect.backbones.export import export_model as export_classifier
from resnet_detect.detection.build import build_model as build_detector
from resnet_detect.detection.config import load_config as load_detection_config
from resnet_detect.detection.export import export_detector
from resnet_detect.engine.export import ExportError
from resnet_detect.engine.quantize import (check_quantization, prepare_calibration,
                                           quantize_graph, spread)
from resnet_detect.segmentation.build import build_model as build_segmenter
from resnet_detect.segmentation.build import load_config as load_segmentation_config
from resnet_detect.segmentation.export import export_segmentor

ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER_CONFIG = ROOT / "configs/pretrain/synthetic_resnet18.yaml"


def image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A uint8 RGB image with smooth regions and edges, as photos have (white noise alone has
    no large features for the convolutions to respond to)."""
    coarse = rng.integers(0, 256, (max(h // 8, 1), max(w // 8, 1), 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(smooth + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight ResNet-18 classifier's float32 export."""
    folder = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3).eval()
    save_checkpoint(folder / "model_final.pth", model.state_dict(),
                    make_provenance("resnet18", class_names=["a", "b", "c"]))
    export_classifier(CLASSIFIER_CONFIG, folder / "model_final.pth", folder / "export")
    return folder / "export/model.onnx"


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Faster R-CNN R18-FPN's float32 export (as tests/detection/test_export.py
    builds it), every candidate kept so that there are 100 detections to compare."""
    folder = tmp_path_factory.mktemp("detector")
    cfg = load_detection_config(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml", [
        "model.num_classes=3", "model.backbone.weights=null", "model.fpn.out_channels=64",
        "model.roi_heads.fc_dims=[64,64]", "model.rpn.post_nms_topk_test=100",
        "model.roi_heads.score_thresh=0.0"])
    torch.manual_seed(0)
    export_detector(build_detector(cfg).eval(), folder, class_names=["a", "b", "c"],
                    category_ids=[1, 2, 3], resize=(96, 160))
    return folder / "model.onnx"


def classifier_inputs(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"image": image(rng, 48, 48)} for _ in range(count)]


def detector_inputs(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"image": image(rng, 96, 128), "original_size": np.array([96, 128])}
            for _ in range(count)]


def run(path: Path, inputs: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, x) for x in inputs]


def weight_producers(graph: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.graph.node for output in node.output}


def assert_quantized_network(path: Path, quantized_ops: set[str],
                             float_scopes: tuple[str, ...] = ()) -> None:
    """Every Conv / Gemm (but those in `float_scopes`) takes its weight from a
    DequantizeLinear of an int8 initializer with one scale per output channel, and its
    activation through a QuantizeLinear / DequantizeLinear pair; the graph holds standard ONNX
    operators only."""
    graph = onnx.load(str(path))
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    producers = weight_producers(graph)
    counts = Counter(node.op_type for node in graph.graph.node)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}  # no contrib ops
    assert [(o.domain, o.version) for o in graph.opset_import] == [("", 17)]
    for node in graph.graph.node:
        if node.op_type not in quantized_ops:
            continue
        if node.name.startswith(float_scopes):
            assert initializers[node.input[1]].dtype == np.float32, node.name
            continue
        dequantize = producers[node.input[1]]
        assert dequantize.op_type == "DequantizeLinear", node.name
        weight = initializers[dequantize.input[0]]
        scale = initializers[dequantize.input[1]]
        assert weight.dtype == np.int8, node.name
        channels = weight.shape[0] if node.op_type == "Conv" else weight.shape[
            0 if any(a.name == "transB" and a.i for a in node.attribute) else 1]
        assert scale.shape == (channels,), node.name  # per output channel
        if len(node.input) > 2:  # the bias: int32 at the scale of input x weight, which
            # ONNX Runtime needs to fuse the layer into one int8 kernel (a bias it cannot
            # read as a constant stays float, and the layer with it)
            bias = producers[node.input[2]]
            assert bias.op_type == "DequantizeLinear", node.name
            assert initializers[bias.input[0]].dtype == np.int32, node.name
        activation = producers[node.input[0]]
        assert activation.op_type == "DequantizeLinear", node.name
        assert producers[activation.input[0]].op_type == "QuantizeLinear", node.name


def test_a_classifier_in_int8_gives_the_float32_logits_within_quantization_noise(
        classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from onnxruntime.quantization import shape_inference
    scratch = []  # where ONNX Runtime's own temporary folders go: in the export's work folder
    real = shape_inference.quant_pre_process

    def probing(*args: Any, **kwargs: Any) -> Any:
        with shape_inference.tempfile.TemporaryDirectory(prefix="pre.quant.") as made:
            scratch.append((Path(made).parent, tempfile.gettempdir()))
        return real(*args, **kwargs)
    monkeypatch.setattr(shape_inference, "quant_pre_process", probing)
    system_temp = tempfile.gettempdir()
    quantize_graph(classifier, tmp_path / "int8.onnx", "classification",
                   classifier_inputs(0, 8))
    # (a killed export left them in /tmp for good: 60 MB for a ResNet-18 detector); the
    # process's own temporary folder is not changed (another thread's files stay there)
    ((folder, process_temp),) = scratch
    assert folder.parent == tmp_path and folder.name.startswith(".quantize-")
    assert not folder.exists() and process_temp == system_temp
    assert shape_inference.tempfile is tempfile
    assert_quantized_network(tmp_path / "int8.onnx", {"Conv", "Gemm"})
    # int8 weights: the file is about a quarter of the float32 one
    assert (tmp_path / "int8.onnx").stat().st_size < 0.3 * classifier.stat().st_size
    # images the calibration did not see. One uint8 step of a per-tensor range is range/255,
    # its rounding noise range/(255 sqrt 12); activations spread over about a sixth of their
    # range, so each quantized tensor adds noise of ~0.7 % of its signal. ResNet-18 quantizes
    # ~40 tensors (activations and weights of 21 layers), noises adding in quadrature:
    # sqrt(40) x 0.7 % = 4.4 % of the logits. Bound: 10 %, over twice that; calibrated on
    # black images (ranges of the wrong images) the error is over 60 %.
    inputs = classifier_inputs(1, 16)
    expected = np.stack([out[0] for out in run(classifier, inputs)])
    got = np.stack([out[0] for out in run(tmp_path / "int8.onnx", inputs)])
    assert np.linalg.norm(got - expected) <= 0.10 * np.linalg.norm(expected)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_a_graph_calibrated_on_other_images_is_caught_by_the_bound(classifier: Path,
                                                                   tmp_path: Path) -> None:
    """The bound above tells a calibrated graph from a miscalibrated one."""
    black = [{"image": np.zeros((48, 48, 3), np.uint8)}] * 4
    quantize_graph(classifier, tmp_path / "black.onnx", "classification", black)
    inputs = classifier_inputs(1, 16)
    expected = np.stack([out[0] for out in run(classifier, inputs)])
    got = np.stack([out[0] for out in run(tmp_path / "black.onnx", inputs)])
    assert np.linalg.norm(got - expected) > 0.3 * np.linalg.norm(expected)


def test_calibration_is_deterministic(classifier: Path, tmp_path: Path) -> None:
    for name in ("first", "second"):
        quantize_graph(classifier, tmp_path / f"{name}.onnx", "classification",
                       classifier_inputs(0, 4))
    assert (tmp_path / "first.onnx").read_bytes() == (tmp_path / "second.onnx").read_bytes()
    quantize_graph(classifier, tmp_path / "other.onnx", "classification",
                   classifier_inputs(5, 4))  # other images, other ranges
    assert (tmp_path / "other.onnx").read_bytes() != (tmp_path / "first.onnx").read_bytes()


def test_a_detector_in_int8_quantizes_the_network_and_keeps_post_processing_float(
        detector: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        quantize_graph(detector, tmp_path / "int8.onnx", "detection", detector_inputs(0, 4))
    # ONNX Runtime's quantizer logged a line per bias it copied (9 for the quickstart)
    assert not [r for r in caplog.records if "onnxruntime" in r.pathname]
    assert logging.getLogger().filters == []  # its filter removed again
    # the box predictor's two layers stay float32: they give the scores and box deltas
    assert_quantized_network(tmp_path / "int8.onnx", {"Conv", "Gemm"},
                             float_scopes=("/roi_heads/box_predictor/",))
    graph = onnx.load(str(tmp_path / "int8.onnx"))
    producers = weight_producers(graph)
    quantized = {node.name for node in graph.graph.node if node.op_type == "DequantizeLinear"}
    assert quantized
    # the post-processing (scores, box decoding, NMS, RoIAlign) reads float32 computed in
    # float32: no DequantizeLinear gives its inputs
    for node in graph.graph.node:
        if node.op_type in ("NonMaxSuppression", "TopK", "Exp", "Sigmoid", "Softmax",
                            "RoiAlign"):
            for name in node.input[1:] if node.op_type == "RoiAlign" else node.input[:1]:
                assert producers[name].op_type != "DequantizeLinear", node.name
    assert not any(node.op_type.startswith("QLinear") for node in graph.graph.node)
    # on images the calibration did not see: the same 100 detections, boxes where they were.
    # The scores differ by ~1e-3 (quantization noise of a few per cent on logits of ~0.1) and
    # some near-equal scores swap places, so each float32 box is looked for among all int8
    # boxes: 98 % of them have one at IoU 0.9 or more (a box moves by a pixel or two at
    # most); bound 90 %. Calibrated on black images, far fewer do.
    inputs = detector_inputs(1, 3)
    for expected, got in zip(run(detector, inputs), run(tmp_path / "int8.onnx", inputs)):
        assert len(got[0]) == len(expected[0]) == 100
        iou = torchvision.ops.box_iou(torch.from_numpy(expected[0]), torch.from_numpy(got[0]))
        assert (iou.max(dim=1).values >= 0.9).float().mean() >= 0.9
        np.testing.assert_allclose(np.sort(got[1]), np.sort(expected[1]), atol=0.01, rtol=0)
        assert set(got[2].tolist()) <= {1, 2, 3}


def test_a_segmenter_in_int8_gives_nearly_the_float32_class_maps(tmp_path: Path) -> None:
    cfg = load_segmentation_config(ROOT / "configs/synthetic/deeplabv3plus_R_18_os16.yaml", [
        "model.num_classes=5", "model.backbone.weights=null", "model.head.channels=32"])
    torch.manual_seed(0)
    model = build_segmenter(cfg).eval()
    # random heads favour one class everywhere: spread the classifier so that the maps vary
    torch.nn.init.normal_(model.head.predictor.weight, std=1.0)
    torch.nn.init.zeros_(model.head.predictor.bias)
    export_segmentor(model, tmp_path / "fp32", class_names=list("abcde"), scale=0.5)
    quantize_graph(tmp_path / "fp32/model.onnx", tmp_path / "int8.onnx", "sem_seg",
                   [{"image": x["image"]} for x in detector_inputs(0, 4)])
    assert_quantized_network(tmp_path / "int8.onnx", {"Conv"})
    inputs = [{"image": x["image"]} for x in detector_inputs(1, 3)]
    for (expected,), (got,) in zip(run(tmp_path / "fp32/model.onnx", inputs),
                                   run(tmp_path / "int8.onnx", inputs)):
        assert got.shape == expected.shape and len(np.unique(expected)) >= 2
        # pixels change class only where two classes' logits were within the noise
        assert (got == expected).mean() >= 0.9


def test_calibration_images_are_spread_over_the_split(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert spread(10, 3) == [0, 3, 6]
    assert spread(4, 4) == [0, 1, 2, 3] and spread(3, 32) == [0, 1, 2]
    assert spread(150, 32)[-1] == 145 and len(set(spread(150, 32))) == 32
    # more asked than the split has: said (the log said "on 2 image(s)" alone)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "val" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "val" / name / "0.png"), image(rng, 60, 60))
    with caplog.at_level(logging.INFO):
        inputs, _ = prepare_calibration("classification", CLASSIFIER_CONFIG,
                                        [f"data.root={tmp_path}"], 10)
    assert len(inputs) == 2
    assert "int8 calibration on 2 image(s) of " in caplog.text
    assert caplog.text.rstrip().endswith("(of the 10 asked: the split has no more, or some "
                                         "could not be read)")


def test_what_cannot_be_quantized_is_refused_naming_the_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for images in (0, -1):
        with pytest.raises(ExportError, match=rf"--calibration-images must be 1 or more, got "
                                              rf"{images}"):
            check_quantization("detection", images)
    with pytest.raises(ExportError, match=r"--quantize int8 is for Faster R-CNN, classifier "
                                          r"and segmentation exports; a Mask R-CNN graph"):
        prepare_calibration("detection", ROOT / "configs/synthetic/mask_rcnn_R_18_FPN.yaml",
                            [], 4)
    # a classifier config without its images (data.root unset)
    with pytest.raises(ExportError, match=r"--quantize int8 calibrates on the config's "
                                          r"validation images, data.root/data.val_split: .*"
                                          r"data.root"):
        prepare_calibration("classification", ROOT / "configs/pretrain/resnet50_imagenet.yaml",
                            [], 4)
    with pytest.raises(ExportError, match=r"--quantize int8 calibrates on the config's "
                                          r"validation images: .*nowhere/val \(data.root/"
                                          r"data.val_split\) is not a folder"):
        prepare_calibration("classification", CLASSIFIER_CONFIG,
                            [f"data.root={tmp_path / 'nowhere'}"], 4)
    with pytest.raises(ExportError, match=r"--quantize int8 calibrates on the config's "
                                          r"validation images; data.val.ann_file and "
                                          r"data.val.img_dir are not set"):
        prepare_calibration("detection", ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml",
                            ["data.val.ann_file=null", "data.val.img_dir=null"], 4)
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    with pytest.raises(ExportError, match=r"--quantize int8 needs onnxruntime's quantization "
                                          r"module"):
        check_quantization("detection", 4)
