"""Segmenters to ONNX (tools/export.py) and back: `OnnxSegmentor` runs an exported graph with
ONNX Runtime behind the `SemanticSegmentor` calls that `Predictor` and evaluation make.

The graph: "image" (H, W, 3) uint8 RGB, any H and W -> "mask" (H, W) int64 class ids, with
the config's single test scale (`test.scales: [s]`: the image is rescaled by s, the logits
back to H x W, as `TTAInference` does) and its `test.max_size` cap, normalisation, padding
to `size_divisibility`, upsampling and argmax inside.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet_detect.engine.data.batching import pad_to_multiple
from resnet_detect.engine.export import (MODEL_FILE, ExportError, OnnxModel,
                                         export_graph, write_metadata)

from .inference import capped_size, resized_argmax
from .model import SemanticSegmentor

TASK = "sem_seg"


def _scaled(length: int | Tensor, scale: float) -> int | Tensor:
    """`TTAInference`'s rescaled side, max(int(length * scale + 0.5), 1) (half up)."""
    if isinstance(length, Tensor):
        return torch.clamp(torch.floor(length.double() * scale + 0.5), min=1).to(torch.int64)
    return max(int(length * scale + 0.5), 1)


def _capped(height: int | Tensor, width: int | Tensor, max_size: int | None
            ) -> tuple[int | Tensor, int | Tensor]:
    """`capped_size` in the graph's integer arithmetic (the sizes are tensors while tracing)."""
    if max_size is None or not isinstance(height, Tensor):
        return capped_size(height, width, max_size)
    longer = torch.maximum(height, width)
    return tuple(torch.where(longer > max_size, torch.clamp(
        (2 * side * max_size + longer) // (2 * longer), min=1), side) for side in (height, width))


class SegmentationGraph(nn.Module):
    """What the ONNX graph computes: one (H, W, 3) uint8 RGB image -> (H, W) class ids, the
    same as `SemanticSegmentor` in evaluation with one test scale and perhaps a longer-side
    cap (`TTAInference`)."""

    def __init__(self, model: SemanticSegmentor, scale: float = 1.0,
                 max_size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.scale = float(scale)
        self.max_size = max_size

    def forward(self, image: Tensor) -> Tensor:
        m = self.model
        x = image.permute(2, 0, 1).float()[None]
        height, width = x.shape[-2:]  # tensors while tracing: the sizes stay symbolic
        rescaled = self.scale != 1.0 or self.max_size is not None
        if rescaled:
            capped = _capped(height, width, self.max_size)
            x = F.interpolate(x, size=tuple(_scaled(side, self.scale) for side in capped),
                              mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        x = pad_to_multiple((x - m.pixel_mean) / m.pixel_std, m.size_divisibility)
        logits = m.logits(x)["sem_seg"][0, :, :h, :w]
        if rescaled:  # back to the image's size a class at a time, as TTAInference.class_map
            return resized_argmax(logits, (height, width))
        return logits.argmax(dim=0)


def export_segmentor(model: SemanticSegmentor, folder: Path, *, class_names: Sequence[str],
                     scale: float = 1.0, max_size: int | None = None,
                     example_size: tuple[int, int] = (96, 128),
                     reduce_zero_label: bool | None = None,
                     model_config: Mapping[str, Any] | None = None,
                     palette: Sequence[Sequence[int]] | None = None,
                     source: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write `folder/model.onnx` and `folder/export.json`; returns the metadata.

    Args:
        scale: the test scale the graph rescales images by (the config's `test.scales`).
        max_size: the longer side images are first scaled down to (`test.max_size`).
        reduce_zero_label: the data.reduce_zero_label the weights were trained with (None:
            not known), for tools/eval.py to compare its data's with.
        palette: the overlays' [r, g, b] colours, one per class (data.palette), for
            tools/demo.py given the graph without a config (None: automatic colours).
    """
    model.eval()
    example = torch.zeros((*example_size, 3), dtype=torch.uint8)
    export_graph(SegmentationGraph(model, scale, max_size), [example], folder / MODEL_FILE,
                 input_names=["image"], output_names=["mask"],
                 dynamic_axes={"image": {0: "height", 1: "width"},
                               "mask": {0: "height", 1: "width"}})
    return write_metadata(
        folder, TASK, inputs={"image": "uint8 (H, W, 3) RGB, any size (no resizing needed)"},
        outputs={"mask": "int64 (H, W) class ids" + (
            " 0..K-1 (the masks' values minus 1: data.reduce_zero_label; add 1 for files "
            "numbered as the masks)" if reduce_zero_label else "")},
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(), class_names=class_names,
        num_classes=model.num_classes, ignore_index=model.ignore_index, resize=None,
        test_scale=float(scale), test_max_size=max_size, reduce_zero_label=reduce_zero_label,
        model_config=dict(model_config or {}),
        **({"palette": [list(c) for c in palette]} if palette is not None else {}),
        **({"exported_from": dict(source)} if source is not None else {}))


class OnnxSegmentor(OnnxModel):
    """An exported segmenter run by ONNX Runtime, called like `SemanticSegmentor` in
    evaluation: `model(images)` -> per image {"mask": (h, w) int64}.

    Attributes:
        class_names, num_classes, ignore_index: from export.json.
    """

    def __init__(self, weights: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        super().__init__(weights, TASK, device,
                         required=("num_classes", "ignore_index", "test_scale"))
        self.class_names = list(self.metadata["class_names"])
        self.num_classes = int(self.metadata["num_classes"])
        if len(self.class_names) != self.num_classes:
            raise ExportError(f"{self.metadata_source} names "
                              f"{len(self.class_names)} classes for a model of "
                              f"{self.num_classes}; export again with tools/export.py")
        self.ignore_index = int(self.metadata["ignore_index"])
        self.test_scale = float(self.metadata["test_scale"])
        self.test_max_size = self.metadata.get("test_max_size")  # exports before the key: None

    def forward(self, images: Sequence[Tensor],
                output_sizes: Sequence[tuple[int, int]] | None = None) -> list[dict[str, Tensor]]:
        if output_sizes is not None:
            raise ExportError("an exported segmenter gives class maps at the input size only")
        results = []
        for image in images:
            (mask,) = self.run_graph({"image": self.hwc_uint8(image)},
                                     "; test.max_size=N at the export caps the image's size")
            results.append({"mask": torch.from_numpy(mask).to(self.device)})
        return results
