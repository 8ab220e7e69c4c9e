"""Layer responses (He et al. 2016, fig. 7): the standard deviation of each block's residual
branch output, after its last norm and before the addition (and before the ReLU of a plain
block), in network order.

Shapes: (N, 3, S, S) normalized images; block i's branch output (N, C_i, H_i, W_i) reduces to
one number, the standard deviation over all its elements and all N images.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..resnet import ResNet
from .path_sampling import branch_output_module
from .training import predict


def block_names(backbone: ResNet) -> list[str]:
    """'res2.0', 'res2.1', ... in network order."""
    return [f"{stage}.{j}" for stage in backbone.stages
            for j in range(len(getattr(backbone, stage)))]


def branch_response_std(model: nn.Module, backbone: ResNet, images: torch.Tensor, *,
                        batch_size: int = 256) -> list[float]:
    """Std of every block's branch output over `images`, in network order.

    Args:
        model: the network to run (e.g. a Classifier) in evaluation mode.
        backbone: the ResNet inside `model` whose blocks are measured.
        images: normalized (N, 3, S, S).
        batch_size: images per forward pass.
    """
    blocks = backbone.blocks()
    sums = torch.zeros(len(blocks), 3, dtype=torch.float64)  # count, sum, sum of squares

    def make_hook(i: int) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            values = output.detach().double()
            sums[i] += torch.stack([torch.tensor(float(values.numel()), dtype=torch.float64),
                                    values.sum().cpu(), values.square().sum().cpu()])
        return hook

    handles = [branch_output_module(b).register_forward_hook(make_hook(i))
               for i, b in enumerate(blocks)]
    try:
        predict(model, images, batch_size=batch_size)
    finally:
        for handle in handles:
            handle.remove()
    count, total, squares = sums.unbind(dim=1)
    if (count == 0).any():
        raise RuntimeError("a block's branch did not run (is a lesion or path sampling active?)")
    mean = total / count
    variance = (squares / count - mean.square()).clamp(min=0) * count / (count - 1).clamp(min=1)
    return variance.sqrt().tolist()
