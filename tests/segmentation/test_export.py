"""ONNX export of DeepLabV3, DeepLabV3+ and FCN: ONNX Runtime, on image sizes and aspect ratios
other than the one exported with, gives the PyTorch class maps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnet_detect.segmentation.build import build_model, load_config
from resnet_detect.segmentation.export import OnnxSegmentor, export_segmentor
from resnet_detect.segmentation.inference import TTAInference

ROOT = Path(__file__).resolve().parents[2]
# none the export size (96, 128); odd sides; (136, 272) capped at 145 is a tie (72.5 rows),
# which float arithmetic in the graph rounded otherwise than the eager path
SIZES = [(77, 141), (150, 90), (35, 250), (136, 272)]


@pytest.mark.parametrize("config, scale, max_size, divisibility", [
    ("deeplabv3_R_50_os16", 1.0, None, 0), ("deeplabv3plus_R_50_os16", 0.5, None, 0),
    ("fcn_R_50_os8", 1.0, None, 0), ("deeplabv3_R_50_os16", 0.75, 145, 0),
    ("deeplabv3plus_R_50_os16", 1.0, None, 32)])
def test_onnx_runtime_gives_the_pytorch_class_maps_at_any_size(
        config: str, scale: float, max_size: int | None, divisibility: int,
        tmp_path: Path) -> None:
    """At the config's test scale too (the quickstarts evaluate half-size images), with a
    longer-side cap that some SIZES exceed: the graph rescales the image and its logits as
    `TTAInference` does; and with images padded to a multiple of 32, whose logits the graph
    crops back."""
    cfg = load_config(ROOT / f"configs/segmentation/{config}.yaml",
                      ["model.num_classes=5", "model.backbone.weights=null",
                       "model.backbone.name=resnet18", "model.backbone.multi_grid=[1,2]",
                       "model.head.channels=32", f"model.size_divisibility={divisibility}"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # random heads favour one class everywhere: spread the classifier so that the maps vary
    torch.nn.init.normal_(model.head.predictor.weight, std=1.0)
    torch.nn.init.zeros_(model.head.predictor.bias)
    export_segmentor(model, tmp_path, class_names=list("abcde"), scale=scale,
                     max_size=max_size)
    tta = TTAInference(scales=(scale,), max_size=max_size)
    onnx_model = OnnxSegmentor(tmp_path)
    # the class map is the image's size, and its axes say so
    assert [i.shape for i in onnx_model.session.get_inputs()] == [["height", "width", 3]]
    assert [o.shape for o in onnx_model.session.get_outputs()] == [["height", "width"]]
    # the model's float32 mean as the config wrote it, not 123.67500305175781
    assert onnx_model.metadata["pixel_mean"] == [123.675, 116.28, 103.53]
    assert onnx_model.class_names == list("abcde") and onnx_model.test_max_size == max_size
    generator = torch.Generator().manual_seed(0)
    for h, w in SIZES:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        with torch.no_grad():
            expected = tta.class_map(model, image)
        got = onnx_model([image])[0]["mask"]
        assert got.shape == expected.shape == (h, w) and len(expected.unique()) >= 2
        assert (got != expected).float().mean() <= 1e-3


def test_class_names_of_another_count_than_the_models_are_refused(tmp_path: Path) -> None:
    """export.json's num_classes was the names' count, so its check against the names could
    not fail: a model of 5 classes exported with 4 names is refused, nothing written."""
    from resnet_detect.engine.export import ExportError
    cfg = load_config(ROOT / "configs/segmentation/deeplabv3_R_50_os16.yaml",
                      ["model.num_classes=5", "model.backbone.weights=null",
                       "model.backbone.name=resnet18", "model.backbone.multi_grid=[1,2]",
                       "model.head.channels=16"])
    with pytest.raises(ExportError, match="4 class names for a model of 5 classes"):
        export_segmentor(build_model(cfg).eval(), tmp_path, class_names=list("abcd"))
    assert list(tmp_path.iterdir()) == []  # no model.onnx.partial either


def test_export_json_says_how_the_masks_are_numbered_under_reduce_zero_label(
        tmp_path: Path) -> None:
    """ADE20K weights (reduce_zero_label): the graph's class ids are the masks' values minus 1
    (eval --save-predictions writes 1..150), and export.json said "class ids" alone."""
    cfg = load_config(ROOT / "configs/segmentation/deeplabv3_R_50_os16.yaml",
                      ["model.num_classes=3", "model.backbone.weights=null",
                       "model.backbone.name=resnet18", "model.backbone.multi_grid=[1,2]",
                       "model.head.channels=8"])
    model = build_model(cfg).eval()
    for reduced in (True, False):
        export_segmentor(model, tmp_path / str(reduced), class_names=list("abc"),
                         reduce_zero_label=reduced)
        written = json.loads((tmp_path / str(reduced) / "export.json").read_text())
        assert written["reduce_zero_label"] is reduced
        assert written["outputs"]["mask"] == "int64 (H, W) class ids" + (
            " 0..K-1 (the masks' values minus 1: data.reduce_zero_label; add 1 for files "
            "numbered as the masks)" if reduced else "")
