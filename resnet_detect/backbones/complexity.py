"""Parameter and multiply-add counts of a model, per top-level stage."""
from __future__ import annotations

import copy
from collections import defaultdict

import torch
from torch import nn

from resnet_detect.engine.trainer import eval_mode


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, image_size: tuple[int, int] = (224, 224)) -> dict[str, int]:
    """Multiply-adds of convolutions and linear layers for one image, by top-level child.

    Keys are the model's top-level child names (for a Classifier: backbone stages and fc)
    plus "total". Normalisation, activations and pooling are not counted, as in He et al.
    Counted on a copy on the meta device: shapes only, nothing allocated at any image size.
    """
    model = copy.deepcopy(model).to("meta")
    stage_of: dict[nn.Module, str] = {}
    roots = model.backbone.named_children() if hasattr(model, "backbone") else []
    for name, child in list(roots) + list(model.named_children()):
        if name == "backbone":
            continue
        for m in child.modules():
            stage_of.setdefault(m, name)
    macs: dict[str, int] = defaultdict(int)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] \
                * module.kernel_size[1]
            count = output[0].numel() * per_output
        else:
            count = module.in_features * module.out_features
        macs[stage_of.get(module, "other")] += count

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with eval_mode(model):
            model(torch.zeros(1, 3, *image_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    result = dict(macs)
    result["total"] = sum(macs.values())
    return result
