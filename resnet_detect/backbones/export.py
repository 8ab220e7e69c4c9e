"""Classifiers of tools/pretrain.py to ONNX (tools/export.py).

The graph: "image" (H, W, 3) uint8 RGB, already resized and cropped by the evaluation rule
(shorter side to `data.val_resize`, centre crop `data.image_size`) -> "logits" (K,) float.
Normalisation is inside; the network itself takes any size.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from resnet_detect.engine.amp import float32_default
from resnet_detect.engine.config import config_section, to_plain
from resnet_detect.engine.export import (ExportError, MODEL_FILE, OnnxModel, export_graph,
                                         exported_from, warn_of_settings_the_graph_keeps,
                                         write_metadata)
from resnet_detect.engine.tasks import load_task_config

from . import build_classifier
from .classifier import Classifier
from .data import VAL_INTERPOLATIONS, warn_of_another_val_transform
from .weights import classifier_checkpoint

logger = logging.getLogger(__name__)

TASK = "classification"
# export.json's words for data.val_interpolation
INTERPOLATION_NOTES = {
    name: "area (OpenCV INTER_AREA where the image shrinks, INTER_LINEAR where it grows; "
    "longer side round(short_side * long / short), crop offsets floored: (side - crop) // 2, "
    "as the evaluation's transform)" if name == "area" else
    f"{name} (Pillow's, as torchvision's Resize: longer side int(short_side * long / "
    f"short), crop offsets rounded)" for name in VAL_INTERPOLATIONS}


class ClassifierGraph(nn.Module):
    """What the ONNX graph computes: one (H, W, 3) uint8 RGB image -> (K,) logits."""

    def __init__(self, model: Classifier, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), False)

    def forward(self, image: Tensor) -> Tensor:
        x = (image.permute(2, 0, 1).float() - self.pixel_mean) / self.pixel_std
        return self.model(x[None])[0]


@float32_default()  # whatever torch's default dtype: float32 weights
def export_model(config: str | os.PathLike, weights: str | os.PathLike, folder: Path,
                 overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Export the classifier `weights` (model_final.pth of tools/pretrain.py, or torchvision /
    timm classifier weights) built as `config` says; returns export.json."""
    from .pretraining import check_data_settings  # (it imports this file)

    # no data is read: data.root (mandatory for training) need not be given
    _, cfg = load_task_config(config, ["data.root=.", *overrides], TASK)
    check_data_settings(cfg)  # the crop and resize written into export.json, among others
    num_classes, provenance = classifier_checkpoint(weights, "export", ExportError)
    with config_section("model"):
        model = build_classifier(cfg.model.name, num_classes, weights=weights,
                                 config_prefix="model.options.", **to_plain(cfg.model.options))
    names = [str(n) for n in provenance.get("class_names") or []]
    if len(names) != num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    warn_of_another_val_transform(weights, provenance, cfg.data, "the export resizes")
    mean = list(provenance.get("pixel_mean") or cfg.data.pixel_mean)
    std = list(provenance.get("pixel_std") or cfg.data.pixel_std)
    size = int(cfg.data.image_size)
    export_graph(ClassifierGraph(model, mean, std),
                 [torch.zeros((size, size, 3), dtype=torch.uint8)], folder / MODEL_FILE,
                 input_names=["image"], output_names=["logits"],
                 dynamic_axes={"image": {0: "height", 1: "width"}})
    return write_metadata(
        folder, TASK, inputs={"image": "uint8 (H, W, 3) RGB, resized and cropped by `resize`"},
        outputs={"logits": "float32 (K,) class scores before softmax"},
        pixel_mean=mean, pixel_std=std, class_names=names, num_classes=num_classes,
        resize={"short_side": int(cfg.data.val_resize), "center_crop": size,
                "interpolation": INTERPOLATION_NOTES[cfg.data.val_interpolation]},
        exported_from=exported_from(weights))


class OnnxClassifier(OnnxModel):
    """An exported classifier (float32 or int8) run by ONNX Runtime where tools/eval.py runs
    the model: (N, 3, H, W) crops of 0..255 values, not normalised (the graph normalises
    them itself) -> (N, K) logits."""

    def __init__(self, weights: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        super().__init__(weights, TASK, device, required=("resize", "num_classes"))

    def forward(self, images: Tensor) -> Tensor:
        logits = [self.run_graph({"image": self.hwc_uint8(image.round().to(torch.uint8))})[0]
                  for image in images]
        return torch.from_numpy(np.stack(logits)).to(self.device)


def crop_as_exported(model: OnnxClassifier, cfg: DictConfig, weights: str | os.PathLike,
                     overrides: Sequence[str]) -> None:
    """Set `cfg`'s val crop keys to the export's resize rule (the graph takes crops made as
    it was exported), naming those the config set otherwise."""
    resize = model.metadata["resize"]
    if not isinstance(resize, dict) or not all(
            isinstance(resize.get(k), int) for k in ("short_side", "center_crop")):
        raise ExportError(f"{model.metadata_source}: its resize {resize!r:.120} lacks the "
                          f"short_side and center_crop of the crops it takes; export again "
                          f"with tools/export.py")
    # by the note's first word, its name (the notes' wording changed since the first exports)
    interpolation = str(resize.get("interpolation") or "").split(" ", 1)[0]
    if interpolation not in VAL_INTERPOLATIONS:
        raise ExportError(f"{model.metadata_source}: its resize interpolation "
                          f"{resize.get('interpolation')!r:.80} names none of "
                          f"{', '.join(VAL_INTERPOLATIONS)}; export again with tools/export.py")
    differing = []
    for key, value in (("val_resize", resize["short_side"]),
                       ("image_size", resize["center_crop"]),
                       ("val_interpolation", interpolation)):
        if value != cfg.data[key]:
            differing.append(f"data.{key} {value} (config: {cfg.data[key]})")
            cfg.data[key] = value
    warn_of_settings_the_graph_keeps(weights, differing, overrides)
