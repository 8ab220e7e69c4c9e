"""Layer responses (He et al. 2016, fig. 7): the standard deviation of each 3x3 layer's output
after its norm and before the nonlinearity (ReLU, or the addition of a residual block), in
network order; or (`layers="blocks"`) of each block's residual branch output, its last norm's.

Shapes: (N, 3, S, S) normalized images; a layer's output (N, C_i, H_i, W_i) reduces to one
number, the standard deviation over all its elements and all N images.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from resnet_detect.engine.config import ConfigError

from ..resnet import ResNet
from .lesion import is_downsampling
from .path_sampling import branch_output_module
from .training import predict

LAYERS = ("3x3", "blocks")


@dataclass
class Layer:
    """A measured output: `name` ("stem", "res2.0.norm1", ...), the norm module giving it,
    and whether it lies in a downsampling block."""

    name: str
    module: nn.Module
    downsampling: bool


def block_names(backbone: ResNet) -> list[str]:
    """'res2.0', 'res2.1', ... in network order."""
    return [f"{stage}.{j}" for stage in backbone.stages
            for j in range(len(getattr(backbone, stage)))]


def _norms_after_3x3(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(norm name, norm) of every convX -> normX pair of `module` whose conv is 3x3."""
    children = dict(module.named_children())
    pairs = []
    for name, conv in children.items():
        norm = children.get("norm" + name[4:]) if name.startswith("conv") else None
        if norm is not None and getattr(conv, "kernel_size", None) == (3, 3):
            pairs.append(("norm" + name[4:], norm))
    return pairs


def response_layers(backbone: ResNet, layers: str = "3x3") -> list[Layer]:
    """The outputs `layer_response_std` measures, in network order: every 3x3 layer's norm
    (the CIFAR stem's included; bottlenecks have one per block), or each block's last norm."""
    if layers not in LAYERS:
        raise ConfigError(f"responses.layers must be one of {', '.join(LAYERS)}, got {layers!r}")
    blocks = list(zip(block_names(backbone), backbone.blocks()))
    if layers == "blocks":
        return [Layer(name, branch_output_module(block), is_downsampling(block))
                for name, block in blocks]
    pairs = backbone.stem.conv_norm_pairs()  # (a deep stem's three: stem.0, stem.1, stem.2)
    found = [Layer("stem" if len(pairs) == 1 else f"stem.{i}", norm, False)
             for i, (conv, norm) in enumerate(pairs) if conv.kernel_size == (3, 3)]
    for name, block in blocks:
        found += [Layer(f"{name}.{norm_name}", norm, is_downsampling(block))
                  for norm_name, norm in _norms_after_3x3(block)]
    return found


def layer_response_std(model: nn.Module, layers: list[Layer], images: torch.Tensor, *,
                       batch_size: int = 256) -> list[float]:
    """Std of every layer's output over `images`, in the order given.

    Args:
        model: the network to run (e.g. a Classifier) in evaluation mode.
        layers: from `response_layers` of the ResNet inside `model`.
        images: normalized (N, 3, S, S).
        batch_size: images per forward pass.
    """
    sums = torch.zeros(len(layers), 3, dtype=torch.float64)  # count, sum, sum of squares

    def make_hook(i: int) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            values = output.detach().double()
            sums[i] += torch.stack([torch.tensor(float(values.numel()), dtype=torch.float64),
                                    values.sum().cpu(), values.square().sum().cpu()])
        return hook

    handles = [layer.module.register_forward_hook(make_hook(i))
               for i, layer in enumerate(layers)]
    try:
        predict(model, images, batch_size=batch_size)
    finally:
        for handle in handles:
            handle.remove()
    count, total, squares = sums.unbind(dim=1)
    if (count == 0).any():
        raise RuntimeError("a layer did not run (is a lesion or path sampling active?)")
    mean = total / count
    variance = (squares / count - mean.square()).clamp(min=0) * count / (count - 1).clamp(min=1)
    return variance.sqrt().tolist()
