"""Parameters and multiply-adds of a segmenter, by part, for one image (counted on the meta
device: shapes only). The auxiliary head runs in training only; its row says so and the
inference total leaves it out."""
from __future__ import annotations

import copy

import torch

from resnet_detect.backbones.complexity import count_parameters, run_counting
from resnet_detect.detection.complexity import padded
from resnet_detect.engine.trainer import eval_mode

from .model import SemanticSegmentor

AUX_ROW = "aux_head (training only)"


def count_segmenter(model: SemanticSegmentor, size: tuple[int, int]
                    ) -> list[tuple[str, int, int]]:
    """(part, parameters, multiply-adds) rows for one image of `size` (H, W), padded as the
    model pads it; the parts' parameters add up to the model's."""
    meta = copy.deepcopy(model).to("meta")
    with eval_mode(meta):
        batch = torch.zeros(1, 3, *padded(size, meta.size_divisibility), device="meta")
        features, backbone = run_counting(meta.backbone, batch)
        rows = [("backbone", count_parameters(model.backbone), backbone[""])]
        _, head = run_counting(meta.head, features, batch.shape[-2:])
        rows.append(("head", count_parameters(model.head), head[""]))
        if meta.aux_head is not None:
            _, aux = run_counting(meta.aux_head, features, batch.shape[-2:])
            rows.append((AUX_ROW, count_parameters(model.aux_head), aux[""]))
    return rows
