"""ONNX export of the classifiers of tools/pretrain.py: ONNX Runtime gives the PyTorch logits
at any input size, and export.json says what the graph expects."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resnet_detect.backbones import build_classifier, make_provenance, save_checkpoint
from resnet_detect.backbones.export import export_model
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.export import ExportError, open_session

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/pretrain/synthetic_resnet18.yaml"
NAMES = ["circle", "cross", "star"]
MEAN, STD = (120.0, 110.0, 100.0), (50.0, 60.0, 70.0)


def _assert_pytorch_logits(model: torch.nn.Module, session: Any,
                           sizes: list[tuple[int, int]]) -> None:
    """ONNX Runtime's logits of random uint8 images of `sizes` are the model's (MEAN, STD)."""
    generator = torch.Generator().manual_seed(0)
    for h, w in sizes:
        image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator)
        x = (image.permute(2, 0, 1).float() - torch.tensor(MEAN).view(3, 1, 1)) \
            / torch.tensor(STD).view(3, 1, 1)
        with torch.no_grad():
            expected = model(x[None])[0].numpy()
        (got,) = session.run(None, {"image": image.numpy()})
        assert got.shape == (len(NAMES),)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_onnx_runtime_gives_the_pytorch_logits_at_any_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet18", len(NAMES)).eval()
    save_checkpoint(tmp_path / "model_final.pth", model.state_dict(),
                    make_provenance("resnet18", class_names=NAMES, pixel_mean=MEAN,
                                    pixel_std=STD))
    export_model(CONFIG, tmp_path / "model_final.pth", tmp_path / "export")
    metadata = json.loads((tmp_path / "export/export.json").read_text())
    assert metadata["class_names"] == NAMES and metadata["pixel_mean"] == list(MEAN)
    assert metadata["resize"] == {"short_side": 54, "center_crop": 48, "interpolation":
                                  "area (OpenCV INTER_AREA where the image shrinks, "
                                  "INTER_LINEAR where it grows; longer side round(short_side * "
                                  "long / short), crop offsets floored: (side - crop) // 2, as "
                                  "the evaluation's transform)"}
    pillow = export_model(CONFIG, tmp_path / "model_final.pth", tmp_path / "bilinear",
                          ["data.val_interpolation=bilinear"])
    assert pillow["resize"]["interpolation"].startswith("bilinear (Pillow's, as torchvision's")
    with pytest.raises(ConfigError, match="data.val_interpolation must be one of area, "
                                          "bilinear, bicubic, got 'linear'"):
        export_model(CONFIG, tmp_path / "model_final.pth", tmp_path / "x",
                     ["data.val_interpolation=linear"])
    assert metadata["num_classes"] == 3  # every task's export.json says it
    session = open_session(tmp_path / "export")
    # named axes, as the detectors' (exporter-made names: 'image_dynamic_axes_1')
    assert [d.shape for d in session.get_inputs()] == [["height", "width", 3]]
    # the same JSON inside the graph, for a service that ships model.onnx alone
    inside = session.get_modelmeta().custom_metadata_map
    assert json.loads(inside["export_json"]) == metadata
    _assert_pytorch_logits(model, session, [(64, 64), (50, 90), (120, 70)])
    # a caller's float64 default dtype wrote float64 weights ONNX Runtime cannot run
    # ("Could not find an implementation for Conv(11)") under an export.json saying float32
    torch.set_default_dtype(torch.float64)
    try:
        export_model(CONFIG, tmp_path / "model_final.pth", tmp_path / "float64")
        assert torch.get_default_dtype() == torch.float64  # the caller's, after
    finally:
        torch.set_default_dtype(torch.float32)
    _assert_pytorch_logits(model, open_session(tmp_path / "float64"), [(120, 70)])
    assert ((tmp_path / "float64/model.onnx").stat().st_size
            == (tmp_path / "export/model.onnx").stat().st_size)


def test_a_backbone_or_mismatched_checkpoint_is_refused_naming_it(tmp_path: Path) -> None:
    backbone = build_classifier("resnet18", 3).backbone
    save_checkpoint(tmp_path / "backbone.pth", backbone.state_dict(), make_provenance("resnet18"))
    with pytest.raises(ExportError, match="backbone.pth holds no classifier"):
        export_model(CONFIG, tmp_path / "backbone.pth", tmp_path / "out")
    # a detector's weights are said to be a detector's, not "a backbone"
    detector = {"backbone.body.conv1.weight": torch.zeros(1), "rpn.head.conv.weight":
                torch.zeros(1), "roi_heads.box_predictor.cls_score.weight": torch.zeros(1)}
    torch.save(detector, tmp_path / "detector.pth")
    with pytest.raises(ExportError, match=r"detector.pth holds a detection model's weights "
                                          r"\(keys \['rpn.head.conv.weight', .*\), not a "
                                          r"classification one: export a model_final.pth of "
                                          r"tools/pretrain.py$"):
        export_model(CONFIG, tmp_path / "detector.pth", tmp_path / "out")
    resnet34 = build_classifier("resnet34", 3)
    save_checkpoint(tmp_path / "r34.pth", resnet34.state_dict(), make_provenance("resnet34"))
    with pytest.raises(ValueError, match="r34.pth"):
        export_model(CONFIG, tmp_path / "r34.pth", tmp_path / "out")
    assert not (tmp_path / "out/model.onnx").exists()


def test_an_export_at_other_sizes_than_the_training_evaluation_warns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = build_classifier("resnet18", len(NAMES))
    provenance = make_provenance("resnet18", class_names=NAMES,
                                 config={"data": {"image_size": 48, "val_resize": 54}})
    save_checkpoint(tmp_path / "model_final.pth", model.state_dict(), provenance)
    export_model(CONFIG, tmp_path / "model_final.pth", tmp_path / "same")
    assert "was evaluated with" not in caplog.text
    imagenet = ROOT / "configs/pretrain/resnet50_imagenet.yaml"  # data.root: ??? (not read)
    export_model(imagenet, tmp_path / "model_final.pth", tmp_path / "other",
                 ["model.name=resnet18"])
    assert "was evaluated with data.image_size=48; the export resizes with this config's 224" \
        in caplog.text
    assert json.loads((tmp_path / "other/export.json").read_text())["resize"]["center_crop"] == 224
    # weights from before data.val_interpolation were evaluated with the area filter
    caplog.clear()
    export_model(CONFIG, tmp_path / "model_final.pth", tmp_path / "bilinear",
                 ["data.val_interpolation=bilinear"])
    assert "was evaluated with data.val_interpolation=area; the export resizes with this " \
           "config's bilinear" in caplog.text


@pytest.mark.parametrize("failing", ["save", "replace"])
def test_an_export_that_cannot_be_written_keeps_the_earlier_one_and_no_partial_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """A full disk while the metadata went in (a second whole copy of the graph) left a
    model.onnx without metadata, a model.onnx.partial filling the disk, no export.json (the
    earlier export's deleted) and a traceback; a model.onnx that cannot be replaced likewise."""
    import errno
    import os

    import onnx

    from resnet_detect.engine.export import ExportError
    torch.manual_seed(0)
    model = build_classifier("resnet18", len(NAMES)).eval()
    save_checkpoint(tmp_path / "model_final.pth", model.state_dict(),
                    make_provenance("resnet18", class_names=NAMES))
    out = tmp_path / "export"
    export_model(CONFIG, tmp_path / "model_final.pth", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    full = OSError(errno.ENOSPC, "No space left on device")
    if failing == "save":
        monkeypatch.setattr(onnx, "save", lambda *a, **k: (_ for _ in ()).throw(full))
    else:
        monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(full))
    with pytest.raises(ExportError, match=f"cannot write the export in {out} \\(OSError: No "
                                          "space left on device\\): free space or choose "
                                          "another --output"):
        export_model(CONFIG, tmp_path / "model_final.pth", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    denied = OSError(errno.EACCES, "Permission denied")  # not a full disk: no such advice
    monkeypatch.setattr(*((onnx, "save") if failing == "save" else (os, "replace")),
                        lambda *a, **k: (_ for _ in ()).throw(denied))
    with pytest.raises(ExportError, match=f"cannot write the export in {out} \\(PermissionError: "
                                          "Permission denied\\): choose another --output$"):
        export_model(CONFIG, tmp_path / "model_final.pth", out)
    assert sorted(before) == ["export.json", "model.onnx"]


def test_export_json_says_the_area_resize_arithmetic_the_evaluation_uses() -> None:
    """It said "INTER_AREA where the image shrinks" only; torchvision's arithmetic (the longer
    side truncated, offsets rounded) shifted 19 of 35 crops a pixel."""
    import cv2

    from resnet_detect.backbones.data import build_val_transform
    from resnet_detect.backbones.export import INTERPOLATION_NOTES

    note = INTERPOLATION_NOTES["area"]
    assert "round(short_side * long / short)" in note and "(side - crop) // 2" in note
    rng = np.random.default_rng(0)
    short_side, crop = 36, 32
    for h, w in ((37, 53), (53, 37), (61, 100), (20, 29), (45, 45), (131, 70)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        scale = short_side / min(h, w)
        size = (short_side, round(w * scale)) if h <= w else (round(h * scale), short_side)
        shrink = size[0] < h
        resized = cv2.resize(image, (size[1], size[0]),
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
        expected = resized[top:top + crop, left:left + crop]
        got = build_val_transform(image_size=crop, resize=short_side, normalize=False,
                                  interpolation="area")(image=image)["image"]
        got = got.permute(1, 2, 0).numpy() if isinstance(got, torch.Tensor) else got
        np.testing.assert_array_equal(got, expected)


def test_bad_model_or_resize_settings_are_config_errors_before_anything_is_written(
        tmp_path: Path) -> None:
    """An unknown model name was ArgumentError's traceback; a centre crop larger than the
    resize's short side was written into export.json as if it could be cut (exit 0)."""
    model = build_classifier("resnet18", len(NAMES)).eval()
    save_checkpoint(tmp_path / "model_final.pth", model.state_dict(),
                    make_provenance("resnet18", class_names=NAMES))
    weights = tmp_path / "model_final.pth"
    with pytest.raises(ConfigError, match=r"^model: unknown backbone 'resnet-18' \(did you mean "
                                          r"'resnet18'\?\); valid: "):
        export_model(CONFIG, weights, tmp_path / "a", ["model.name=resnet-18"])
    with pytest.raises(ConfigError, match=r"data.val_resize \(54, .*\) must be >= "
                                          r"data.image_size \(64, "):
        export_model(CONFIG, weights, tmp_path / "b", ["data.image_size=64"])
    with pytest.raises(ConfigError, match="data.image_size must be a positive integer"):
        export_model(CONFIG, weights, tmp_path / "c", ["data.image_size=0"])
    with pytest.raises(ConfigError, match="data.pixel_std must be 3 numbers"):
        export_model(CONFIG, weights, tmp_path / "d", ["data.pixel_std=[1,0,1]"])
    assert not [p for p in tmp_path.iterdir() if p.name in "abcd"]


def test_a_resnet_d_classifier_exports_with_its_pooled_shortcuts(tmp_path: Path) -> None:
    """ResNet-D's shortcuts average-pool in ceil mode without the padding (ONNX AveragePool's
    ceil_mode and count_include_pad): odd sizes give ONNX Runtime the PyTorch logits."""
    torch.manual_seed(0)
    model = build_classifier("resnet18d", len(NAMES)).eval()
    for m in model.modules():  # (statistics of their own: each norm changes the result)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    save_checkpoint(tmp_path / "model_final.pth", model.state_dict(),
                    make_provenance("resnet18d", class_names=NAMES, pixel_mean=MEAN,
                                    pixel_std=STD))
    export_model(CONFIG, tmp_path / "model_final.pth", tmp_path / "export",
                 ["model.name=resnet18d"])
    _assert_pytorch_logits(model, open_session(tmp_path / "export"), [(67, 93), (50, 41)])


def test_tools_eval_scores_an_export_float32_or_int8_on_the_crops_it_was_exported_for(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An export (an int8 one above all, whose logits are not the .pth's) could not be scored
    ("tools/eval.py scores a classifier's .pth weights"), though the README asks to score an
    int8 export before deploying it. Expected: ONNX Runtime run here on centre crops cut by
    hand (54 px short sides: no resizing), top-1 / top-5 counted here."""
    import logging
    import shutil

    import cv2

    from resnet_detect.backbones.classifier_eval import evaluate_checkpoint
    from resnet_detect.engine.quantize import quantize_graph

    torch.manual_seed(0)
    model = build_classifier("resnet18", len(NAMES)).eval()
    save_checkpoint(tmp_path / "model_final.pth", model.state_dict(),
                    make_provenance("resnet18", class_names=NAMES, pixel_mean=MEAN,
                                    pixel_std=STD))
    rng = np.random.default_rng(0)

    def val_split(root: Path, sizes: list[tuple[int, int]], crop: Any
                  ) -> tuple[list[np.ndarray], list[int]]:
        """Random images of `sizes` per class under root/val (root/train empty); their
        crops as `crop` cuts them, and their labels."""
        crops, labels = [], []
        for label, name in enumerate(NAMES):
            for i, (h, w) in enumerate(sizes):
                image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                path = root / "val" / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                crops.append(np.ascontiguousarray(crop(image)))
                labels.append(label)
        (root / "train").mkdir()
        return crops, labels

    def centre_48(image: np.ndarray) -> np.ndarray:
        top, left = (image.shape[0] - 48) // 2, (image.shape[1] - 48) // 2
        return image[top:top + 48, left:left + 48]
    crops, labels = val_split(tmp_path / "data", [(54, 70), (70, 54), (54, 54)], centre_48)
    export_model(CONFIG, tmp_path / "model_final.pth", tmp_path / "fp32")
    shutil.copytree(tmp_path / "fp32", tmp_path / "int8")
    quantize_graph(tmp_path / "fp32/model.onnx", tmp_path / "int8/model.onnx", "classification",
                   [{"image": crop} for crop in crops[:4]])
    overrides = [f"data.root={tmp_path / 'data'}", "data.num_workers=0"]
    cpu = torch.device("cpu")

    def expected(graph: Path) -> dict[str, float]:
        session = open_session(graph)
        logits = np.stack([session.run(None, {"image": crop})[0] for crop in crops])
        top5 = np.argsort(-logits, axis=1)[:, :3]  # (3 classes: top-5 is every one)
        hits = top5 == np.array(labels)[:, None]
        return {"top1": 100 * hits[:, 0].mean(), "top5": 100 * hits.any(axis=1).mean()}

    pth = evaluate_checkpoint(CONFIG, tmp_path / "model_final.pth", tmp_path, overrides, cpu)
    for graph in ("fp32", "int8"):
        result = evaluate_checkpoint(CONFIG, tmp_path / graph, tmp_path, overrides, cpu)
        want = expected(tmp_path / graph)
        assert result["classification"] == pytest.approx(want, abs=1e-9), graph
        assert result["exported_from"]["weights"] == str(tmp_path / "model_final.pth")
        assert result["images"]["images"] == 9
    assert pth["classification"] == pytest.approx(expected(tmp_path / "fp32"), abs=1e-9)
    # crop keys other than the export's: the export's, named
    with caplog.at_level(logging.WARNING):
        other = evaluate_checkpoint(CONFIG, tmp_path / "int8/model.onnx", tmp_path,
                                    [*overrides, "data.val_resize=64"], cpu)
    assert other["classification"] == pytest.approx(expected(tmp_path / "int8"), abs=1e-9)
    assert "runs as it was exported, not as the config says: data.val_resize 54 (config: 64)" \
        in caplog.text
    # a bilinear export on images that are resized: torchvision's Resize + CenterCrop crops
    from PIL import Image
    from torchvision.transforms import functional as tvf
    export_model(CONFIG, tmp_path / "model_final.pth", tmp_path / "bilinear",
                 ["data.val_interpolation=bilinear", "data.val_resize=60", "data.image_size=56"])
    crops, labels = val_split(tmp_path / "data2", [(81, 105), (120, 64), (37, 90)], lambda image: (
        np.asarray(tvf.center_crop(tvf.resize(Image.fromarray(image), 60), 56))))
    from resnet_detect.backbones.export import OnnxClassifier
    fed, run = [], OnnxClassifier.run_graph
    monkeypatch.setattr(OnnxClassifier, "run_graph",
                        lambda self, inputs: fed.append(inputs["image"]) or run(self, inputs))
    result = evaluate_checkpoint(CONFIG, tmp_path / "bilinear", tmp_path,
                                 [f"data.root={tmp_path / 'data2'}", "data.num_workers=0"], cpu)
    assert result["classification"] == pytest.approx(expected(tmp_path / "bilinear"), abs=1e-9)
    assert len(fed) == 9 and all((a == b).all() for a, b in zip(fed, crops, strict=True))


def test_an_export_names_its_checkpoint_and_a_stopped_one_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A re-export killed partway left the earlier graph, which eval scored without a word,
    and nothing told which checkpoint a graph was made from."""
    import hashlib
    import logging

    from resnet_detect.backbones.export import OnnxClassifier
    from resnet_detect.engine.export import is_onnx

    model = build_classifier("resnet18", len(NAMES)).eval()
    weights = tmp_path / "run/model_final.pth"
    weights.parent.mkdir()
    save_checkpoint(weights, model.state_dict(), make_provenance("resnet18", class_names=NAMES))
    metadata = export_model(CONFIG, weights, tmp_path / "export")
    assert metadata["exported_from"] == {
        "weights": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    partial = tmp_path / "export/model.onnx.partial"
    partial.write_bytes(b"the next export's first bytes")
    with caplog.at_level(logging.WARNING):
        OnnxClassifier(tmp_path / "export")
    assert (f"an export into {tmp_path / 'export'} stopped before it ended, or is writing now "
            f"(model.onnx.partial there): {tmp_path / 'export/model.onnx'} is the earlier "
            f"export's, of {weights}") in caplog.text
    partial.unlink()  # an int8 export stopped before its graph: its float32 work folder
    (tmp_path / "export/.float32-x").mkdir()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        OnnxClassifier(tmp_path / "export")
    assert "stopped before it ended, or is writing now (.float32-x there)" in caplog.text
    partial.write_bytes(b"the next export's first bytes")
    from resnet_detect.engine.export import OnnxModel
    with pytest.raises(ExportError, match=r"is for task 'classification'; this config's task is "
                                          r"'detection' \(it runs with a pretraining config: "
                                          r"tools/eval.py\)$"):
        OnnxModel(tmp_path / "export", "detection")  # (detection.Predictor given a classifier)
    (tmp_path / "export/model.onnx").unlink()
    (tmp_path / "export/export.json").unlink()
    assert is_onnx(tmp_path / "export")  # (was "a folder, not a weights file")
    with pytest.raises(ExportError, match=r"model.onnx: no such ONNX file \(an export into "
                                          r".*export stopped before it ended: export again"):
        OnnxClassifier(tmp_path / "export")
