"""`model.channels_last`: a detector's or segmenter's weights in NHWC on a GPU.

cuDNN's tensor-core convolutions work on NHWC maps; with NCHW weights and maps it transposes
around many of them. Weights in channels_last make each convolution's output channels_last
too (cuDNN follows the weight's layout), so the whole network runs NHWC from the first
convolution on. Whether that pays depends on the model (the RoI heads of Faster R-CNN gain
nothing from it; the dense heads do): the task configs set it where it was measured faster,
benchmarks/gpu_suite.py's "channels_last" rows, BENCHMARKS.md.

On a CPU the setting changes nothing: the batches are channels_last there already
(engine/data/batching.py) and the weights stay as the CPU convolution paths
(backbones/conv.py) were measured with. Pretraining's classifiers take the key on every
device (backbones/pretraining.py).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def place_model(model: nn.Module, device: torch.device | str, channels_last: bool) -> nn.Module:
    """`model` moved to `device`, its 4-d weights channels_last when `channels_last` and the
    device is a GPU. The state_dict keys and values are those of the NCHW model."""
    device = torch.device(device)
    model.to(device)
    if channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def contiguous(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state_dict with NCHW (contiguous) tensors, as checkpoints are written whatever the
    model's layout: a file reads the same on any device, for any reader (a `.view`, a
    safetensors conversion)."""
    return {key: value.contiguous() for key, value in state_dict.items()}
