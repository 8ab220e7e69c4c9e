"""Bilinear upsampling (``F.interpolate``, align_corners=False) whose backward on a GPU is two
matrix products.

PyTorch's CUDA backward of bilinear upsampling scatters every output pixel's gradient into
four input pixels with atomic adds; at 8x (logits at stride 8 upsampled to the crop) 64
output pixels add into each input pixel, and a profile of a DeepLabV3-R50 training step on an
H200 had that kernel as its largest (BENCHMARKS.md, GPU run 5). Bilinear interpolation is
separable, ``out = R @ x @ C^T`` with R (H, h) and C (W, w) holding each output row's and
column's two weights, so the gradient is ``R^T @ grad @ C``: dense products with no atomics.
The forward stays ``F.interpolate`` (the same logits, the same ONNX graph); the CPU keeps
PyTorch's backward (no atomics there, and the dense products cost more at large sizes).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# read at every call: the GPU suite measures the step with it off too
MATMUL_BACKWARD_ON_CUDA = True


def interpolation_matrix(out_size: int, in_size: int, device: torch.device) -> Tensor:
    """(out_size, in_size) float32 weights of 1-D linear interpolation as ``F.interpolate``
    computes it for a given size, align_corners=False: output i reads the source coordinate
    (i + 0.5) * in / out - 0.5, clamped at 0, from its two neighbours."""
    source = ((torch.arange(out_size, dtype=torch.float64, device=device) + 0.5)
              * (in_size / out_size) - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    frac = source - low
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64, device=device)
    rows = torch.arange(out_size, device=device)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix.float()


class _BilinearMatmulBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, size: tuple[int, int]) -> Tensor:
        ctx.in_size = tuple(x.shape[-2:])
        ctx.dtype = x.dtype
        ctx.channels_last = (x.is_contiguous(memory_format=torch.channels_last)
                             and not x.is_contiguous())
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (h, w), (big_h, big_w) = ctx.in_size, grad.shape[-2:]
        # float32 products whatever the grad's dtype (each input pixel sums up to 64 terms),
        # also where torch.compile traces this backward inside the forward's autocast; under
        # TF32 (allow_tf32) they round as the convolutions' products do
        with torch.autocast(grad.device.type, enabled=False):
            rows = interpolation_matrix(big_h, h, grad.device)
            cols = interpolation_matrix(big_w, w, grad.device)
            grad_x = (rows.t() @ (grad.float() @ cols)).to(ctx.dtype)
        if ctx.channels_last:  # the layout the convolution before it gave (and takes back)
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        return grad_x, None


def upsample_bilinear(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` for (N, C, h, w) x;
    on a GPU, when a gradient is needed, its backward as matrix products."""
    if (MATMUL_BACKWARD_ON_CUDA and x.is_cuda and x.requires_grad and torch.is_grad_enabled()
            and not torch.jit.is_tracing()):
        return _BilinearMatmulBackward.apply(x, (int(size[0]), int(size[1])))
    # the size as given: an exported graph computes it from the input's
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
