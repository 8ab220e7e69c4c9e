"""ONNX export of DeepLabV3, DeepLabV3+ and FCN: ONNX Runtime, on image sizes and aspect ratios
other than the one exported with, gives the PyTorch class maps."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segmentation.build import build_model, load_config
from segmentation.export import OnnxSegmentor, export_segmentor

ROOT = Path(__file__).resolve().parents[2]
SIZES = [(77, 141), (150, 90), (33, 250)]  # none the export size (96, 128)


@pytest.mark.parametrize("config", ["deeplabv3_R_50_os16", "deeplabv3plus_R_50_os16",
                                    "fcn_R_50_os8"])
def test_onnx_runtime_gives_the_pytorch_class_maps_at_any_size(config: str,
                                                               tmp_path: Path) -> None:
    cfg = load_config(ROOT / f"configs/segmentation/{config}.yaml",
                      ["model.num_classes=5", "model.backbone.weights=null",
                       "model.backbone.name=resnet18", "model.backbone.multi_grid=[1,2]",
                       "model.head.channels=32"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    export_segmentor(model, tmp_path, class_names=list("abcde"))
    onnx_model = OnnxSegmentor(tmp_path)
    assert onnx_model.class_names == list("abcde")
    generator = torch.Generator().manual_seed(0)
    for h, w in SIZES:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        with torch.no_grad():
            expected = model([image])[0]["mask"]
        got = onnx_model([image])[0]["mask"]
        assert got.shape == expected.shape == (h, w) and len(expected.unique()) > 1
        assert (got != expected).float().mean() <= 1e-3
