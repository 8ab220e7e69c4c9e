"""Segmenters to ONNX (tools/export.py) and back: `OnnxSegmentor` runs an exported graph with
ONNX Runtime behind the `SemanticSegmentor` calls that `Predictor` and evaluation make.

The graph: "image" (H, W, 3) uint8 RGB, any H and W -> "mask" (H, W) int64 class ids, with
the config's single test scale (`test.scales: [s]`: the image is rescaled by s, the logits
back to H x W, as `TTAInference` does), normalisation, padding to `size_divisibility`,
upsampling and argmax inside.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.export import (MODEL_FILE, ExportError, export_graph, open_session, read_metadata,
                           write_metadata)

from .model import SemanticSegmentor

TASK = "sem_seg"


def _scaled(length: int | Tensor, scale: float) -> int | Tensor:
    """`TTAInference`'s rescaled side, max(round(length * scale), 1) (half to even)."""
    if isinstance(length, Tensor):
        return torch.clamp(torch.round(length.double() * scale), min=1).to(torch.int64)
    return max(round(length * scale), 1)


class SegmentationGraph(nn.Module):
    """What the ONNX graph computes: one (H, W, 3) uint8 RGB image -> (H, W) class ids, the
    same as `SemanticSegmentor` in evaluation with one test scale (`TTAInference`)."""

    def __init__(self, model: SemanticSegmentor, scale: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.scale = float(scale)

    def forward(self, image: Tensor) -> Tensor:
        m = self.model
        x = image.permute(2, 0, 1).float()[None]
        height, width = x.shape[-2:]  # tensors while tracing: the sizes stay symbolic
        if self.scale != 1.0:
            x = F.interpolate(x, size=(_scaled(height, self.scale), _scaled(width, self.scale)),
                              mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        x = (x - m.pixel_mean) / m.pixel_std
        d = m.size_divisibility
        if d > 1:
            x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
        logits = m.logits(x)["sem_seg"][:, :, :h, :w]
        if self.scale != 1.0:
            logits = F.interpolate(logits, size=(height, width), mode="bilinear",
                                   align_corners=False)
        return logits[0].argmax(dim=0)


def export_segmentor(model: SemanticSegmentor, folder: Path, *, class_names: Sequence[str],
                     scale: float = 1.0, example_size: tuple[int, int] = (96, 128)
                     ) -> dict[str, Any]:
    """Write `folder/model.onnx` and `folder/export.json`; returns the metadata.

    Args:
        scale: the test scale the graph rescales images by (the config's `test.scales`).
    """
    model.eval()
    example = torch.zeros((*example_size, 3), dtype=torch.uint8)
    export_graph(SegmentationGraph(model, scale), [example], folder / MODEL_FILE,
                 input_names=["image"], output_names=["mask"],
                 dynamic_axes={"image": (0, 1), "mask": (0, 1)})
    return write_metadata(
        folder, TASK, inputs={"image": "uint8 (H, W, 3) RGB, any size (no resizing needed)"},
        outputs={"mask": "int64 (H, W) class ids"},
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(), class_names=class_names,
        num_classes=model.num_classes, ignore_index=model.ignore_index, resize=None,
        test_scale=float(scale))


class OnnxSegmentor(nn.Module):
    """An exported segmenter run by ONNX Runtime, called like `SemanticSegmentor` in
    evaluation: `model(images)` -> per image {"mask": (h, w) int64}.

    Attributes:
        class_names, num_classes, ignore_index: from export.json.
    """

    def __init__(self, weights: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        super().__init__()
        metadata = read_metadata(weights, TASK)
        self.session = open_session(weights, device)
        self.class_names = list(metadata["class_names"])
        self.num_classes = int(metadata["num_classes"])
        self.ignore_index = int(metadata["ignore_index"])
        self.test_scale = float(metadata["test_scale"])
        # where the tensors handed back live (evaluation reads the model's device from here)
        self.register_buffer("pixel_mean", torch.tensor(metadata["pixel_mean"]).view(3, 1, 1),
                             False)
        self.to(device)

    def forward(self, images: Sequence[Tensor],
                output_sizes: Sequence[tuple[int, int]] | None = None) -> list[dict[str, Tensor]]:
        if output_sizes is not None:
            raise ExportError("an exported segmenter gives class maps at the input size only")
        results = []
        for image in images:
            if image.dtype != torch.uint8:
                raise ExportError(f"an exported segmenter takes uint8 images, got {image.dtype}")
            hwc = np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())
            (mask,) = self.session.run(None, {"image": hwc})
            results.append({"mask": torch.from_numpy(mask).to(self.pixel_mean.device)})
        return results
