"""relu(conv(x) + bias [+ addend]) as one cuDNN call on a GPU: the fused-convolution lever.

PyTorch runs a convolution's bias as a separate pass over the output map (cuDNN's convolution
takes none), then the ReLU, and in a residual block the shortcut's addition, each one more
read and write of the whole map. With a frozen BatchNorm folded into its convolution
(`layers.conv_norm`) every convolution of a detector's backbone has a bias: in run 5's
bf16 Faster R-CNN step on an H200 the bias additions alone were 76 kernels, 15 of 148 ms of
GPU time. cuDNN fuses all of it into the convolution's epilogue
(`torch.cudnn_convolution_relu`, `torch.cudnn_convolution_add_relu`, which PyTorch provides
for inference); `_ConvAddReLU` gives them a backward: the ReLU's mask from the output, then
PyTorch's convolution backward (as the plain path's).

Off unless `FUSE_ON_CUDA` (benchmarks/gpu_suite.py's det_fusion phase measures it); never on a
CPU, under tracing (export) or torch.compile (inductor fuses these itself), with cuDNN's
deterministic mode (the fused ops have none), with hooks to honour, or for a convolution
whose input channels are not a multiple of 8 (the stem's 3: cuDNN's fused engines want
tensor-core alignment, and a 7x7 fused convolution was reported many times slower, PyTorch
issue 68506). Should cuDNN refuse a call (no engine or plan for it), that call runs the plain
way, and so does every later call of the same kind (dtype, layout, weight shape, geometry,
addend or not), with one warning each.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import FrozenBatchNorm2d, _has_hooks, conv_norm

FUSE_ON_CUDA = False
DEVICE_TYPES = ("cuda",)  # where the fused ops exist
refusals: dict[tuple, str] = {}  # the calls cuDNN refused, by kind: its message
# what a refusal says: cuDNN's errors and PyTorch's search for an engine; anything else
# (a CUDA fault, a wrong shape) is raised as it is
REFUSAL_WORDS = ("cudnn", "engine", "execution plan")


def conv_norm_relu(conv: nn.Conv2d, norm: nn.Module | None, x: Tensor,
                   addend: Tensor | None = None) -> Tensor:
    """relu(norm(conv(x)) + addend), norm None for a convolution with its own bias (or none);
    one fused cuDNN call where `fusable`, else the plain ops (in place where they were)."""
    if fusable(conv, norm, x):
        kind = _kind(conv, x, addend)
        if kind not in refusals:
            if norm is None:
                weight, bias = conv.weight, conv.bias
            else:
                weight, bias = norm.fold_into(conv.weight)
            try:
                return fused(x, weight, bias, addend, conv)
            except RuntimeError as error:
                if not _refusal(error):
                    raise
                _refuse(kind, error)
    out = conv(x) if norm is None else conv_norm(conv, norm, x)
    if addend is not None:
        out += addend
    return F.relu(out, inplace=True)


def fusable(conv: nn.Conv2d, norm: nn.Module | None, x: Tensor) -> bool:
    """The lever on, a 2-d zero-padded convolution of a multiple of 8 input channels on a GPU,
    a frozen BatchNorm (foldable: no bias of the convolution's own) or none, no hooks to
    honour, not deterministic, traced or compiled."""
    if not (FUSE_ON_CUDA and x.device.type in DEVICE_TYPES and x.dim() == 4
            and torch.backends.cudnn.enabled and not torch.backends.cudnn.deterministic
            and not torch.are_deterministic_algorithms_enabled()):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if (conv.in_channels % 8 or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
            or _has_hooks(conv)):
        return False
    if norm is None:
        return True
    return isinstance(norm, FrozenBatchNorm2d) and conv.bias is None and not _has_hooks(norm)


def fused(x: Tensor, weight: Tensor, bias: Tensor | None, addend: Tensor | None,
          conv: nn.Conv2d) -> Tensor:
    """relu(conv(x, weight) + bias + addend) in one call, in autocast's dtype where autocast
    is on (these ops are not on its lists), with a gradient where one is needed."""
    dtype = _compute_dtype(x)
    x, weight = x.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    addend = None if addend is None else addend.to(dtype)
    geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, addend))
    if not needs_grad:
        return _forward(x, weight, bias, addend, geometry)
    return _ConvAddReLU.apply(x, weight, bias, addend, geometry)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """autocast's dtype where it is on for x's device, else x's."""
    device_type = x.device.type
    return (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
            else x.dtype)


def _forward(x: Tensor, weight: Tensor, bias: Tensor | None, addend: Tensor | None,
             geometry: tuple) -> Tensor:
    if addend is None:
        return cudnn_convolution_relu(x, weight, bias, *geometry)
    return cudnn_convolution_add_relu(x, weight, addend, 1.0, bias, *geometry)


# module attributes, so a CPU test can stand a reference in for cuDNN's kernels
cudnn_convolution_relu = torch.cudnn_convolution_relu
cudnn_convolution_add_relu = torch.cudnn_convolution_add_relu


class _ConvAddReLU(torch.autograd.Function):
    """The fused forward; backward: the ReLU's mask (output > 0, as F.relu's backward), the
    addend's gradient is that, and PyTorch's convolution backward gives the rest."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None,  # noqa: ANN001
                addend: Tensor | None, geometry: tuple) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            out = _forward(x, weight, bias, addend, geometry)
        ctx.save_for_backward(x, weight, out)
        ctx.geometry = geometry
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:  # noqa: ANN001
        x, weight, out = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        needs_x, needs_weight, needs_bias, needs_addend, _ = ctx.needs_input_grad
        grad = torch.ops.aten.threshold_backward(grad, out, 0)
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if needs_bias else None, stride, padding,
            dilation, False, [0] * len(stride), groups, [needs_x, needs_weight, needs_bias])
        return grad_x, grad_weight, grad_bias, (grad if needs_addend else None), None


def _kind(conv: nn.Conv2d, x: Tensor, addend: Tensor | None) -> tuple:
    """What cuDNN's choice of an engine depends on: dtypes, layout, weight shape, geometry,
    an addend or not."""
    return (x.dtype, _compute_dtype(x), x.is_contiguous(), tuple(conv.weight.shape), conv.stride,
            conv.padding, conv.dilation, conv.groups, addend is not None)


def _refusal(error: RuntimeError) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", ()))):
        return False
    message = str(error).lower()
    return any(word in message for word in REFUSAL_WORDS)


def _refuse(kind: tuple, error: RuntimeError) -> None:
    refusals[kind] = f"{type(error).__name__}: {error}".splitlines()[0]
    warnings.warn(f"cuDNN refused a fused convolution (backbones.fused_conv: {kind}): "
                  f"{refusals[kind]}; the plain convolution runs for this kind of call",
                  stacklevel=3)
