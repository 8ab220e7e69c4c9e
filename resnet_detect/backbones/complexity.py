"""Parameter and multiply-add counts of a model, per part.

Multiply-adds are torch's FlopCounterMode count (convolutions, transposed ones too, and
matrix products; 2 FLOPs per multiply-add) halved, the convention of He et al.'s "FLOPs"
and of torchvision's published `_ops`. Normalisation, activations, pooling, RoIAlign and
resizing are not counted.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet_detect.engine.trainer import eval_mode


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def run_counting(fn: Callable[..., Any], *args: Any) -> tuple[Any, dict[str, int]]:
    """(fn(*args), its multiply-adds by module): "" holds the total, "res2" or "head.conv"
    (paths below the module called, or below the first module `fn` calls) their share."""
    with FlopCounterMode(display=False) as counter:
        output = fn(*args)
    by_module: dict[str, int] = {"": 0}
    for path, counts in counter.get_flop_counts().items():
        total = sum(counts.values()) // 2
        if path == "Global":
            by_module[""] = total
        elif "." in path:  # "Classifier.backbone.res2": the root's class name first
            by_module[path.split(".", 1)[1]] = total
    return output, by_module


def count_macs(model: nn.Module, image_size: tuple[int, int] = (224, 224)) -> dict[str, int]:
    """Multiply-adds of a classifier for one image, by top-level part.

    Keys are the model's top-level child names (for a Classifier: backbone stages and fc)
    plus "total". Counted on a copy on the meta device: shapes only, nothing allocated at
    any image size.
    """
    model = copy.deepcopy(model).to("meta")
    with eval_mode(model):
        _, by_module = run_counting(model, torch.zeros(1, 3, *image_size, device="meta"))
    parts = [f"backbone.{name}" for name, _ in model.backbone.named_children()] \
        if hasattr(model, "backbone") else []
    parts += [name for name, _ in model.named_children() if name != "backbone"]
    macs: dict[str, int] = defaultdict(int)
    for part in parts:
        macs[part.removeprefix("backbone.")] = by_module.get(part, 0)
    macs["total"] = by_module[""]
    return dict(macs)
