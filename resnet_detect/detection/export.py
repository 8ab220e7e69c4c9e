"""Detectors to ONNX (tools/export.py) and back: `OnnxDetector` runs an exported graph with
ONNX Runtime behind the `GeneralizedRCNN` calls that `Predictor` and evaluation make.

The graph: "image" (H, W, 3) uint8 RGB, already resized by the test-time rule (any H, W),
and "original_size" int64 [h, w] (the size before resizing) -> "boxes" (D, 4) float32 xyxy
in original pixels, "scores" (D,), "labels" (D,) int64 dataset category ids, and for
Mask R-CNN "masks" (D, h, w) bool, or with `mask_output="box"` "mask_probs" (D, M, M) float32
(each box's mask before pasting; `OnnxDetector` pastes them as `Predictor` does).
Normalisation, padding and NMS are inside.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from resnet_detect.engine.data.batching import pad_to_multiple
from resnet_detect.engine.export import (MODEL_FILE, ExportError, OnnxModel, export_graph,
                                         write_metadata)

from .rcnn import GeneralizedRCNN
from .roi_heads.mask_paste import paste_masks, paste_masks_dense

TASK = "detection"
# what a Mask R-CNN graph gives: every mask pasted at original_size, or each box's M x M mask
MASK_OUTPUTS = ("pasted", "box")


class DetectionGraph(nn.Module):
    """What the ONNX graph computes: `GeneralizedRCNN` in evaluation on one image, boxes and
    masks in the original image's pixels, labels as dataset category ids."""

    def __init__(self, model: GeneralizedRCNN, category_ids: Sequence[int],
                 mask_output: str = "pasted") -> None:
        super().__init__()
        self.model = model
        self.mask_output = mask_output
        self.register_buffer("category_ids", torch.tensor(list(category_ids)), False)

    def forward(self, image: Tensor, original_size: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        x = (image.permute(2, 0, 1).float() - m.pixel_mean) / m.pixel_std
        height, width = x.shape[-2:]  # tensors while tracing: the sizes stay symbolic
        batch = pad_to_multiple(x, m.size_divisibility)[None]
        features = m.backbone(batch)
        proposals, _ = m.rpn(features, [(height, width)], batch.shape[-2:], None)
        (det,), _ = m.roi_heads(features, [p["boxes"] for p in proposals], [(height, width)])
        size = original_size.to(torch.float64)
        scale = torch.stack([size[1] / width, size[0] / height] * 2).to(torch.float32)
        boxes = det["boxes"] * scale
        outputs = (boxes, det["scores"], self.category_ids[det["labels"]])
        if m.mask_on and self.mask_output == "box":
            outputs += (det["mask_probs"],)
        elif m.mask_on:
            outputs += (paste_masks_dense(det["mask_probs"], boxes,
                                          (original_size[0], original_size[1]),
                                          threshold=m.mask_threshold),)
        return outputs


def output_names(model: GeneralizedRCNN, mask_output: str = "pasted") -> list[str]:
    masks = ["mask_probs" if mask_output == "box" else "masks"] if model.mask_on else []
    return ["boxes", "scores", "labels", *masks]


def export_detector(model: GeneralizedRCNN, folder: Path, *, class_names: Sequence[str],
                    category_ids: Sequence[int], resize: tuple[int, int | None],
                    example_size: tuple[int, int] = (96, 128),
                    mask_output: str | None = None,
                    model_config: Mapping[str, Any] | None = None,
                    source: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write `folder/model.onnx` and `folder/export.json`; returns the metadata.

    Args:
        resize: (short side, max size) of the test-time resizing the graph expects.
        mask_output: Mask R-CNN: "pasted" (masks at original_size; None: this) or "box"
            (each box's M x M mask probabilities, for the caller to paste).

    Raises:
        ExportError: `mask_output` is not one of `MASK_OUTPUTS`, or given for a model
            without masks.
    """
    if mask_output is not None and mask_output not in MASK_OUTPUTS:
        raise ExportError(f"mask output must be one of {', '.join(MASK_OUTPUTS)}, got "
                          f"{mask_output!r}")
    if mask_output is not None and not model.mask_on:
        raise ExportError(f"mask_output={mask_output!r} (tools/export.py --mask-output) is "
                          f"for Mask R-CNN (model.mask_on: true); this detector has no masks")
    mask_output = mask_output or "pasted"
    model.eval()
    example = (torch.zeros((*example_size, 3), dtype=torch.uint8),
               torch.tensor(example_size, dtype=torch.int64))
    names = output_names(model, mask_output)
    dynamic = {"image": {0: "height", 1: "width"}, **{name: {0: "detections"} for name in names}}
    if model.mask_on and mask_output == "pasted":
        dynamic["masks"] = {0: "detections", 1: "original_height", 2: "original_width"}
    side = 2 * model.roi_heads.mask_pooler.output_size[0] if model.mask_on else 0  # (deconv)
    export_graph(DetectionGraph(model, category_ids, mask_output), example,
                 folder / MODEL_FILE, input_names=["image", "original_size"],
                 output_names=names, dynamic_axes=dynamic)
    box_predictor = model.roi_heads.box_predictor
    outputs = {"boxes": "float32 (D, 4) xyxy in original-image pixels",
               "scores": "float32 (D,), decreasing", "labels": "int64 (D,) category ids"}
    if model.mask_on and mask_output == "box":
        outputs["mask_probs"] = (f"float32 (D, {side}, {side}) each box's mask "
                                 f"probabilities, to paste into its box (README)")
    elif model.mask_on:
        outputs["masks"] = "bool (D, h, w) at original_size (pasted at once: D*h*w floats)"
    return write_metadata(
        folder, TASK,
        inputs={"image": "uint8 (H, W, 3) RGB, resized by `resize`",
                "original_size": "int64 [h, w] of the image before resizing"},
        outputs=outputs, pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(), class_names=class_names,
        num_classes=model.roi_heads.num_classes,
        fixed_dims={"boxes": {1: 4}, "mask_probs": {1: side, 2: side}},
        category_ids=[int(c) for c in category_ids],
        resize={"short_side": int(resize[0]),
                "max_size": int(resize[1]) if resize[1] else None,
                "interpolation": "bilinear (OpenCV, as detection.data.build_transforms)"},
        model_config=dict(model_config or {}),
        **({"exported_from": dict(source)} if source is not None else {}),
        mask_on=model.mask_on, **({"mask_threshold": model.mask_threshold,
                                   "mask_output": mask_output} if model.mask_on else {}),
        score_thresh=box_predictor.score_thresh,
        nms_thresh=box_predictor.nms_thresh,
        detections_per_image=box_predictor.detections_per_image)


PASTED_MASKS_MEMORY = ("; this graph pastes every mask at the image's size (detections x "
                       "height x width floats): an export with --mask-output box pastes one "
                       "box at a time, as the .pth checkpoint does")


class OnnxDetector(OnnxModel):
    """An exported detector run by ONNX Runtime, called like `GeneralizedRCNN` in evaluation:
    `model(images, output_sizes)` -> per image {"boxes", "scores", "labels" (0..K-1), and
    "masks" for Mask R-CNN}.

    Attributes:
        metadata: export.json.
        mask_on: whether the graph returns masks.
        mask_output: "pasted" or "box" (the graph gives each box's mask; pasted here).
    """

    def __init__(self, weights: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        super().__init__(weights, TASK, device, required=("category_ids", "mask_on", "resize"))
        ids = self.metadata["category_ids"]
        if not isinstance(ids, list) or not ids or any(
                not isinstance(c, int) or c < 0 for c in ids) \
                or len(ids) != len(self.metadata["class_names"]):
            raise ExportError(f"{self.metadata_source}: the category_ids {ids!r:.80} are not "
                              f"one non-negative int per class name; export again with "
                              f"tools/export.py")
        self.mask_on = bool(self.metadata["mask_on"])
        # exports before the option pasted
        self.mask_output = self.metadata.get("mask_output", "pasted") if self.mask_on \
            else "pasted"
        if self.mask_output not in MASK_OUTPUTS or self.mask_output == "box" and not \
                isinstance(self.metadata.get("mask_threshold"), (int, float)):
            raise ExportError(f"{self.metadata_source}: mask_output {self.mask_output!r} with "
                              f"mask_threshold {self.metadata.get('mask_threshold')!r} is not "
                              f"an export of this project's; export again with "
                              f"tools/export.py")
        self.mask_threshold = self.metadata.get("mask_threshold", 0.5)
        self._raised_score_thresh: float | None = None
        # by search, not a table indexed by id: ids may be as large as 2**40
        self._id_order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
        self._sorted_ids = np.asarray(ids, dtype=np.int64)[self._id_order]

    @property
    def score_thresh(self) -> float | None:
        """The score a detection must exceed: the graph's own (its export's; None where its
        metadata does not record it) or a higher one set here, below which the graph's
        detections are left out (as the model would leave them out: NMS and the top
        detections_per_image keep the same ones above it)."""
        return (self._raised_score_thresh if self._raised_score_thresh is not None
                else self.metadata.get("score_thresh"))

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        graph = self.metadata.get("score_thresh")
        if isinstance(graph, (int, float)) and value < graph:
            raise ValueError(f"score_thresh {value}: {self.metadata_source} records the exported "
                             f"graph's score threshold {graph} (its export's "
                             f"model.roi_heads.score_thresh), below which it keeps no "
                             f"detection; export again with model.roi_heads.score_thresh={value}")
        self._raised_score_thresh = None if value == graph else float(value)

    def _labels_of(self, category_ids: np.ndarray) -> np.ndarray:
        """The model's class index (0..K-1) of each of the graph's category ids."""
        return self._id_order[np.searchsorted(self._sorted_ids, category_ids)]

    def forward(self, images: Sequence[Tensor],
                output_sizes: Sequence[tuple[int, int]] | None = None) -> list[dict[str, Tensor]]:
        return self.inference(images, output_sizes)

    def inference(self, images: Sequence[Tensor],
                  output_sizes: Sequence[tuple[int, int]] | None = None, *,
                  pasted: bool = True) -> list[dict[str, Tensor]]:
        """As `GeneralizedRCNN.inference`: without `pasted`, a graph of box masks gives its
        ``"mask_probs"`` unpasted (a graph that pastes gives ``"masks"`` still)."""
        sizes = output_sizes or [tuple(image.shape[-2:]) for image in images]
        if len(sizes) != len(images):
            raise ValueError(f"got {len(images)} images but {len(sizes)} output_sizes")
        device = self.device
        results = []
        for image, size in zip(images, sizes):
            out = self.run_graph({"image": self.hwc_uint8(image),
                                  "original_size": np.asarray(size, dtype=np.int64)},
                                 PASTED_MASKS_MEMORY if self.mask_output == "pasted"
                                 and self.mask_on else "")
            if self._raised_score_thresh is not None:
                keep = out[1] > self._raised_score_thresh
                out = [part[keep] for part in out]
            result = {"boxes": torch.from_numpy(out[0]).to(device),
                      "scores": torch.from_numpy(out[1]).to(device),
                      "labels": torch.from_numpy(self._labels_of(out[2])).to(device)}
            if self.mask_output == "box" and not pasted:
                result["mask_probs"] = torch.from_numpy(out[3]).to(device)
            elif self.mask_output == "box":
                # as GeneralizedRCNN pastes: one box region at a time, not D x h x w floats
                result["masks"] = paste_masks(torch.from_numpy(out[3]),
                                              torch.from_numpy(out[0]), size,
                                              threshold=self.metadata["mask_threshold"]
                                              ).to(device)
            elif self.mask_on:
                result["masks"] = torch.from_numpy(out[3]).to(device)
            results.append(result)
        return results
