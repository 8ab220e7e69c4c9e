"""Optimizers shared by the training tools: SGD or AdamW, no weight decay on 1-d parameters,
optional learning-rate factors per module."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .config import ConfigError

OPTIMIZERS = ("sgd", "adamw")


def check_learning_rate(value: float, key: str) -> None:
    """A base learning rate `key` that can train: finite and above 0."""
    if value > 0 and math.isfinite(value):
        return
    why = ("the weights would never change" if value == 0 else
           "the steps would climb the loss" if value < 0 else
           "the first step would make every weight infinite or NaN")
    raise ConfigError(f"{key} is {value}: {why}; set a positive learning rate")


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, nesterov: bool = False,
                    betas: tuple[float, float] = (0.9, 0.999),
                    lr_multipliers: Mapping[str, float] | None = None
                    ) -> torch.optim.Optimizer:
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
        lr_multipliers: module name -> factor: the parameters of that module (`backbone`,
            `roi_heads.box_head`) train at factor x the learning rate, the longest name that
            contains a parameter winning (mmengine's paramwise lr_mult, detectron2's
            per-parameter overrides); `unknown_modules` names those matching nothing.

    The parameter groups: the other parameters with and without decay first (the logged lr is
    the first group's), then each named module's two, in the names' sorted order, so that
    the groups of a resumed run are those of its checkpoint whatever the factors.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    multipliers = dict(lr_multipliers or {})
    longest_first = sorted(multipliers, key=len, reverse=True)
    parts: dict[str | None, tuple[list[nn.Parameter], list[nn.Parameter]]] = {
        key: ([], []) for key in [None, *sorted(multipliers)]}
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            module = next((k for k in longest_first if _inside(param_name, k)), None)
            parts[module][param.ndim <= 1].append(param)
    groups = [{"params": params, "weight_decay": weight_decay if i == 0 else 0.0,
               "lr": lr * (1.0 if module is None else multipliers[module])}
              for module, both in parts.items() for i, params in enumerate(both)]
    # one fused kernel for all parameters instead of a loop of small ops per parameter
    # (measured in BENCHMARKS.md, "Where a quickstart step spends its time")
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                for group in groups for p in group["params"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov,
                                fused=fused)
    fill_momentum_buffers(optimizer)
    return optimizer


def _inside(param_name: str, module: str) -> bool:
    return param_name.startswith(module + ".") or param_name == module


def unknown_modules(model: nn.Module, modules: Iterable[str], trainable: bool = False
                    ) -> list[str]:
    """The names among `modules` that hold none of `model`'s parameters (`trainable`: none
    that trains)."""
    names = [name for name, p in model.named_parameters() if p.requires_grad or not trainable]
    return [m for m in modules if not any(_inside(name, m) for name in names)]


def refuse_unknown_modules(model: nn.Module, modules: Iterable[str]) -> None:
    """train.lr_multipliers' module names: each holds parameters of `model`, else a
    ConfigError listing its modules."""
    unknown = unknown_modules(model, modules)
    if unknown:
        names = sorted({".".join(name.split(".")[:-1][:depth])
                        for name, _ in model.named_parameters() for depth in (1, 2)} - {""})
        raise ConfigError(f"train.lr_multipliers names {', '.join(unknown)}, which holds no "
                          f"parameter of this model; its modules include: "
                          f"{', '.join(names[:40])}")


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


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (momentum, Adam's moments) its parameter's memory
    layout. A checkpoint keeps its tensors' strides: a GPU run with model.channels_last saved
    NHWC buffers; resumed beside NCHW parameters (on a CPU, or with channels_last changed),
    the fused step, which walks the tensors as flat arrays, updated the weights with the wrong
    buffer elements on a CPU (and refuses mixed strides on a GPU)."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if (isinstance(value, torch.Tensor) and value.shape == param.shape
                    and value.stride() != param.stride()):
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
