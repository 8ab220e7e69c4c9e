"""Optimizers shared by the training tools: SGD or AdamW, no weight decay on 1-d parameters."""
from __future__ import annotations

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, nesterov: bool = False,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters of `model`.

    Norm weights and biases (every parameter with ndim <= 1) get no weight decay, as in the
    detectron2/timm recipes: decaying the scale of a normalised layer only fights its gain.

    Args:
        model: the module to optimise.
        name: "sgd" (momentum, optionally Nesterov) or "adamw" (decoupled weight decay).
        lr: base learning rate.
        weight_decay: weight decay of the conv and linear weights.
        momentum: SGD momentum.
        nesterov: Nesterov momentum for SGD.
        betas: AdamW moment decay rates.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # one fused kernel for all parameters instead of a loop of small ops per parameter
    # (measured in BENCHMARKS.md, "Where a quickstart step spends its time")
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                for p in decay + no_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused)
