"""2-D convolution whose CPU weight gradient avoids oneDNN's slow channels-last path on AVX2.

On CPUs without AVX-512 (AVX2 kernels), oneDNN's weight gradient of a 3x3 convolution on a
large channels-last map is several times slower than the same gradient on NCHW copies of the
input and the incoming gradient (measured in BENCHMARKS.md: 7.8 s against 2.5 s, copies
included, for 2 x 256 x 200 x 272), while its forward and input gradient are fast on
channels-last maps. So for those convolutions the weight gradient is computed on NCHW copies;
everything else (the forward, the input gradient, other CPUs, small maps, 1x1 kernels, CUDA,
autocast) is PyTorch's own convolution. Same values up to float32 summation order.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

# output pixels per image from which the NCHW weight gradient pays (below it the two are even)
LARGE_MAP_PIXELS = 10_000
_AVX2_ONLY = torch.backends.cpu.get_cpu_capability() == "AVX2"  # the CPUs it was measured on


def _output_pixels(x: Tensor, weight: Tensor, stride: tuple[int, ...],
                   padding: tuple[int, ...], dilation: tuple[int, ...]) -> int:
    pixels = 1
    for size, k, s, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation):
        pixels *= (size + 2 * p - d * (k - 1) - 1) // s + 1
    return pixels


def _weight_grad_on_nchw_copies(x: Tensor, weight: Tensor) -> bool:
    return (_AVX2_ONLY and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.requires_grad and torch.is_grad_enabled() and x.dim() == 4
            and weight.shape[2] * weight.shape[3] > 1
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu"))


class _ConvWeightGradOnNCHW(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any,
                padding: Any, dilation: Any, groups: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (list(stride), list(padding), list(dilation), groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        args = (stride, padding, dilation, False, [0, 0], groups)
        backward = torch.ops.aten.convolution_backward
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = backward(grad, x, weight, None, *args, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = backward(grad.contiguous(), x.contiguous(), weight.contiguous(), None,
                              *args, [False, True, False])[1]
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any,
           dilation: Any, groups: int) -> Tensor:
    """F.conv2d, with the weight gradient on NCHW copies where that is faster (see above)."""
    if not isinstance(padding, str) and _weight_grad_on_nchw_copies(x, weight):
        stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
        if _output_pixels(x, weight, stride, padding, dilation) >= LARGE_MAP_PIXELS:
            return _ConvWeightGradOnNCHW.apply(x, weight, bias, stride, padding, dilation,
                                               groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state-dict keys) through `conv2d`."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
