"""Optimizers shared by the training tools: SGD or AdamW, no weight decay on 1-d parameters."""
from __future__ import annotations

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, nesterov: bool = False,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters of `model`.

    Norm weights and biases (every parameter with ndim <= 1) get no weight decay, as in Goyal
    et al.'s ImageNet recipe and timm's: decaying the scale of a normalised layer only fights
    its gain. detectron2 exempts norms only (it decays biases) and torchvision's references
    decay everything; with frozen BN, a detector's exempt tensors are its biases, a
    negligible difference.

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
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov,
                                fused=fused)
    fill_momentum_buffers(optimizer)
    return optimizer


def fill_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter of an SGD with momentum a (zero) momentum buffer where it has none.

    The fused step refuses a parameter without a buffer beside others with one: one whose
    first gradient comes steps after the others' (a residual branch that path sampling left
    out, a head without targets yet). A zero buffer gives the same numbers as the one SGD
    makes from the first gradient (dampening 0)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group["momentum"]:
            for param in group["params"]:
                state = optimizer.state[param]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(
                        param, memory_format=torch.preserve_format)
