"""2-D convolution whose CPU weight gradient avoids two slow oneDNN paths on AVX2.

On CPUs without AVX-512 (AVX2 kernels), oneDNN computes two kinds of weight gradient several
times slower than plain alternatives (measured in BENCHMARKS.md), while its forward and input
gradient are fast:
- a 3x3 convolution on a large channels-last map (7.8 s against 2.5 s for 2 x 256 x 200 x 272):
  for the common 3x3 stride-1 "same" convolution (ResNet blocks, FPN outputs, the RPN) it is
  nine matrix products per image read in place from the channels-last memory (one per kernel
  tap, the input's pixel rows shifted by the tap), otherwise it is computed on NCHW copies of
  the input and incoming gradient;
- a convolution whose output map is smaller than its kernel (ResNet's last stage on 64 px crops,
  2 x 2 maps), where oneDNN falls back to a slow GEMM kernel, or a dilated one whose map is at
  most twice its dilated kernel's reach (DeepLab's last stage on 10 x 10 maps): there it is one
  matrix product of the incoming gradient with the unfolded input patches.
And a 3x3 stride-1 "same" convolution of at least 128 channels on enough channels-last pixels
runs forward (training and inference) and backward as Winograd products on AVX2
(`winograd.py`: 4x fewer multiplications, values to a few times float32's rounding);
on Intel CPUs with AVX-512 kernels too, from 256 channels on large maps (R50-FPN's p2-p4),
where oneDNN's float32 convolution is slower than the products (on AMD's AVX-512 it is not).
Everything else (other CPUs, tracing for export, 1x1 kernels, grouped convolutions, CUDA,
autocast) is PyTorch's own convolution. Same values up to float32 summation order.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .winograd import Winograd3x3, tile_grid

# output pixels per image from which the NCHW weight gradient pays (below it the two are even)
LARGE_MAP_PIXELS = 10_000
# ... and from which the shifted products pay (below it nine small products per image do not)
SHIFTED_GEMM_PIXELS = 1_000
# Winograd pays from this many channels in and out, this many 4 x 4 output blocks in the batch,
# and at most this much padding of the map to whole blocks (smaller or ragged maps lose)
WINOGRAD_CHANNELS = 128
WINOGRAD_BLOCKS = 100
WINOGRAD_PADDED_AREA = 1.25
# ... and on Intel's AVX-512 kernels from these (smaller maps lose there: R50's res5, 128
# channels)
INTEL_AVX512_WINOGRAD_CHANNELS = 256
INTEL_AVX512_WINOGRAD_BLOCKS = 400


def _intel_cpu() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        return False


_AVX2_ONLY = torch.backends.cpu.get_cpu_capability() == "AVX2"  # the CPUs it was measured on
_INTEL_AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512" and _intel_cpu()

WeightGrad = Callable[[Tensor, Tensor, Tensor, list, list, list, int], Tensor]


def _output_size(x: Tensor, weight: Tensor, stride: tuple[int, ...],
                 padding: tuple[int, ...], dilation: tuple[int, ...]) -> list[int]:
    return [(size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation)]


def weight_grad_on_nchw_copies(grad: Tensor, x: Tensor, weight: Tensor, stride: list,
                               padding: list, dilation: list, groups: int) -> Tensor:
    return torch.ops.aten.convolution_backward(
        grad.contiguous(), x.contiguous(), weight.contiguous(), None, stride, padding, dilation,
        False, [0, 0], groups, [False, True, False])[1]


def weight_grad_as_one_gemm(grad: Tensor, x: Tensor, weight: Tensor, stride: list,
                            padding: list, dilation: list, groups: int) -> Tensor:
    """(out channels x images*pixels) @ (images*pixels x in channels*kernel), groups == 1."""
    patches = F.unfold(x, weight.shape[2:], dilation, padding, stride)  # N, C*kh*kw, pixels
    out_channels = weight.shape[0]
    grad_rows = grad.reshape(grad.shape[0], out_channels, -1).transpose(0, 1)
    return (grad_rows.reshape(out_channels, -1)
            @ patches.transpose(1, 2).reshape(-1, patches.shape[1])).view_as(weight)


def weight_grad_as_shifted_gemms(grad: Tensor, x: Tensor, weight: Tensor, stride: list,
                                 padding: list, dilation: list, groups: int) -> Tensor:
    """3x3, stride 1, padding 1, groups 1, channels-last x: for each kernel tap and image, the
    (pixels x out channels) gradient rows times the (pixels x in channels) input rows shifted
    by the tap, both views of the channels-last memory (no copy). A flat shift by one column
    pairs each row's last pixel with the next row's first (or the reverse); those pairs are
    subtracted again."""
    n, c, h, w = x.shape
    o = grad.shape[1]
    xs = x.permute(0, 2, 3, 1)  # (N, H, W, C) views
    gs = grad.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    taps = x.new_zeros(3, 3, o, c)
    for i in range(n):
        x_rows, g_rows = xs[i].reshape(h * w, c), gs[i].reshape(h * w, o)
        for ky, kx in itertools.product(range(3), range(3)):
            dy, dx = ky - 1, kx - 1
            shift = dy * w + dx
            y0, y1 = max(0, -dy), h - max(0, dy)  # output rows whose input row exists
            f0, f1 = max(y0 * w, -shift), min(y1 * w, h * w - shift)
            tap = taps[ky, kx]
            tap.addmm_(g_rows[f0:f1].t(), x_rows[f0 + shift:f1 + shift])
            if dx == 1:  # last column paired with the first of the next row
                ya, yb = y0, min(y1, h - dy - 1)
                g_wrap, x_wrap = gs[i, ya:yb, w - 1], xs[i, ya + dy + 1:yb + dy + 1, 0]
            elif dx == -1:  # first column paired with the last of the row before
                ya, yb = max(y0, 1 - dy), y1
                g_wrap, x_wrap = gs[i, ya:yb, 0], xs[i, ya + dy - 1:yb + dy - 1, w - 1]
            else:
                continue
            if yb > ya:
                tap.addmm_(g_wrap.t(), x_wrap, alpha=-1)
    return taps.permute(2, 3, 0, 1).contiguous()


def _float32_matmuls() -> bool:
    """False where float32 matrix products run in bf16 on the CPU (set_float32_matmul_precision
    "medium"): the products would carry bf16's error into the whole convolution, which PyTorch's
    own keeps in float32."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    return getattr(matmul, "fp32_precision", "none") in ("none", "ieee", "tf32")


def _float32_on_cpu(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and not torch.is_autocast_enabled("cpu") and _float32_matmuls())


def _float32_on_avx2(x: Tensor) -> bool:
    return _AVX2_ONLY and _float32_on_cpu(x)


def _trains_on_avx2(x: Tensor, weight: Tensor) -> bool:
    return _float32_on_avx2(x) and weight.requires_grad and torch.is_grad_enabled()


def takes_winograd(x: Tensor, weight: Tensor, stride: tuple[int, int],
                   padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> bool:
    """Training and inference (`conv2d` asks only outside tracing and compiling)."""
    if _AVX2_ONLY:
        min_channels, min_blocks = WINOGRAD_CHANNELS, WINOGRAD_BLOCKS
    elif _INTEL_AVX512:
        min_channels, min_blocks = INTEL_AVX512_WINOGRAD_CHANNELS, INTEL_AVX512_WINOGRAD_BLOCKS
    else:
        return False
    if not (_float32_on_cpu(x) and groups == 1 and tuple(weight.shape[2:]) == (3, 3)
            and tuple(stride) == (1, 1) and tuple(padding) == (1, 1)
            and tuple(dilation) == (1, 1) and min(weight.shape[:2]) >= min_channels
            and x.is_contiguous(memory_format=torch.channels_last)):
        return False
    n, _, h, w = x.shape
    blocks = n * math.prod(tile_grid(h, w))
    return blocks >= min_blocks and 16 * blocks <= WINOGRAD_PADDED_AREA * n * h * w


def own_weight_grad(x: Tensor, weight: Tensor, stride: tuple[int, int],
                    padding: tuple[int, int], dilation: tuple[int, int],
                    groups: int) -> WeightGrad | None:
    """The weight gradient this convolution takes instead of PyTorch's, or None for PyTorch's."""
    if not _trains_on_avx2(x, weight) or weight.shape[2] * weight.shape[3] == 1:
        return None
    out_h, out_w = _output_size(x, weight, stride, padding, dilation)
    reach_h, reach_w = (d * (k - 1) + 1 for d, k in zip(dilation, weight.shape[2:]))
    if groups == 1 and (out_h < weight.shape[2] or out_w < weight.shape[3]
                        or (max(dilation) > 1 and out_h <= 2 * reach_h
                            and out_w <= 2 * reach_w)):
        return weight_grad_as_one_gemm
    if not x.is_contiguous(memory_format=torch.channels_last):
        return None
    if (groups == 1 and tuple(weight.shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1)
            and min(out_h, out_w) >= 2 and out_h * out_w >= SHIFTED_GEMM_PIXELS):
        return weight_grad_as_shifted_gemms
    if out_h * out_w >= LARGE_MAP_PIXELS:
        return weight_grad_on_nchw_copies
    return None


class _ConvWithOwnWeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any,
                padding: Any, dilation: Any, groups: int, weight_grad: WeightGrad) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (list(stride), list(padding), list(dilation), groups)
        ctx.weight_grad = weight_grad
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = ctx.weight_grad(grad, x, weight, stride, padding, dilation, groups)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None, None


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any,
           dilation: Any, groups: int) -> Tensor:
    """F.conv2d, as Winograd products or with its own weight gradient where faster (above)."""
    # a graph keeps the convolution operator; and TorchDynamo will not read the float32
    # precision setting that the routes check (a graph break at every convolution)
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if not isinstance(padding, str):
        stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
        if takes_winograd(x, weight, stride, padding, dilation, groups):
            return Winograd3x3.apply(x, weight, bias)
        weight_grad = own_weight_grad(x, weight, stride, padding, dilation, groups)
        if weight_grad is not None:
            return _ConvWithOwnWeightGrad.apply(x, weight, bias, stride, padding, dilation,
                                                groups, weight_grad)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state-dict keys) through `conv2d`."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
