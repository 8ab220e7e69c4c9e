"""Normalization layers, shape records and conv helpers shared by the ResNet family."""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks

from resnet_detect.engine.config import ArgumentError

from .conv import Conv2d

NORMS = ("bn", "frozen_bn", "gn", "syncbn")


class ShapeSpec(NamedTuple):
    """Channels and stride (relative to the input image) of a feature map."""

    channels: int
    stride: int


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers.

    Same keys as nn.BatchNorm2d (minus `num_batches_tracked`), so torchvision, timm and
    detectron2 weights load into it unchanged. eps matches torchvision's FrozenBatchNorm2d.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self._folded: tuple | None = None  # what fold_into keeps: key, inputs, result

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,  # noqa: ANN001
                              missing_keys, unexpected_keys, error_msgs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift) with forward(x) == x * scale + shift."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def fold_into(self, conv_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of one convolution computing conv then this norm.

        Kept between calls while the buffers and the convolution's weight are the same tensors,
        unchanged (same storage, same version counter: a load, an optimizer step or `.to()`
        recomputes it; a write through `.data`, which PyTorch does not count, is not seen):
        the whole result where the weight needs no gradient (inference, frozen stages), already
        in the autocast dtype there (in inference a folded copy of every weight is held), else
        the scale and shift. Recomputed, the folding is six small kernels per convolution (more
        than the rest of a ResNet's forward launches: what bounds a GPU at batch 1) and, on a
        CPU, a pass over every weight.
        """
        def scale_and_shift() -> tuple[torch.Tensor, torch.Tensor]:
            scale, shift = self.scale_and_shift()
            return scale.to(conv_weight.dtype), shift.to(conv_weight.dtype)

        buffers = (self.weight, self.bias, self.running_mean, self.running_var)
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if tracing or (torch.is_grad_enabled() and conv_weight.requires_grad):
            # weight * scale belongs to the graph (traced or compiled: the scale and shift too)
            scale, shift = (scale_and_shift() if tracing
                            else self._kept(buffers, conv_weight.dtype, scale_and_shift))
            return conv_weight * scale.view(-1, 1, 1, 1), shift
        dtype, device_type = conv_weight.dtype, conv_weight.device.type
        if torch.is_autocast_enabled(device_type) and dtype == torch.float32:
            dtype = torch.get_autocast_dtype(device_type)  # what autocast would cast it to

        def fold() -> tuple[torch.Tensor, torch.Tensor]:
            scale, shift = scale_and_shift()
            return (conv_weight * scale.view(-1, 1, 1, 1)).to(dtype), shift.to(dtype)
        return self._kept((*buffers, conv_weight), dtype, fold)

    def _kept(self, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype,
              compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """compute(), or what it gave last time if `inputs` are the same tensors (not new ones
        at a freed one's address), unchanged since (same storage, same version counter), and
        the dtype and inference mode are the same."""
        if any(t.is_inference() for t in inputs):  # no version counter to go by
            return compute()
        key = (dtype, inputs[0].device, torch.is_inference_mode_enabled(),
               *((t.data_ptr(), t._version) for t in inputs))
        kept = self._folded
        if (kept is not None and kept[0] == key
                and all(ref() is t for ref, t in zip(kept[1], inputs))):
            return kept[2]
        result = compute()
        self._folded = (key, [weakref.ref(t) for t in inputs], result)
        return result

    def __getstate__(self) -> dict:  # what fold_into keeps is not saved (nor picklable)
        return {**self.__dict__, "_folded": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Return `module` with every BatchNorm2d/SyncBatchNorm inside replaced by a frozen copy."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _has_hooks(module: nn.Module) -> bool:
    """Hooks a call other than module(x) would skip: the module's own, forward or backward,
    and the global ones (nn.modules.module.register_module_forward_hook and its kin)."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or module._backward_hooks or module._backward_pre_hooks
                or any(getattr(module_hooks, name, None)
                       for name in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                    "_global_backward_hooks", "_global_backward_pre_hooks")))


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm(conv(x)); a frozen BatchNorm is folded into the convolution.

    conv(x, w * scale) + shift is one pass over the output map where conv, multiply and add
    are three (and, in training, the multiply's backward a fourth); the values are the same up
    to float rounding. Modules with forward hooks are called as they are, so the hooks see them.
    BatchNorm in eval mode is left as it is: classifiers keep torchvision's rounding.
    """
    if (not isinstance(norm, FrozenBatchNorm2d) or conv.bias is not None
            or _has_hooks(conv) or _has_hooks(norm)):
        return norm(conv(x))
    weight, bias = norm.fold_into(conv.weight)
    return conv._conv_forward(x, weight, bias)  # conv's own path


class ConvNorm(nn.Sequential):
    """conv then norm, as nn.Sequential (same state-dict keys), through `conv_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_norm(self[0], self[1], x)


def build_norm(norm: str, channels: int) -> nn.Module:
    """Build a normalization layer by name: bn, frozen_bn, gn (32 groups; where 32 does not
    divide the channels, as DeepLabV3+'s 48, the most groups below that do) or syncbn."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(max(g for g in range(1, 33) if channels % g == 0), channels)
    if norm == "syncbn":
        return nn.SyncBatchNorm(channels)
    theirs = {n.replace("_", ""): n for n in NORMS}.get(str(norm).lower().replace("_", ""))
    raise ArgumentError(f"norm {norm!r} is not valid; valid: {', '.join(NORMS)}" + (
        f" (detectron2's and mmdetection's {norm!r} is {theirs!r} here)" if theirs else ""))


def conv3x3(in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1,
            groups: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias whose padding keeps the size (up to stride)."""
    return Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation,
                  dilation=dilation, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Conv2d:
    return Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Shortcut option A of He et al.: subsample by `stride`, pad new channels with zeros.

    Parameter-free, so the CIFAR nets keep the paper's parameter counts.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


class AvgDownShortcut(nn.Sequential):
    """ResNet-D's projection shortcut (He et al. 2019, "Bag of Tricks"; timm's and
    mmdetection's `avg_down`): a 2x2 average pool takes the stride, then a stride-1 1x1
    convolution and its norm see every input pixel, where a strided 1x1 convolution drops
    three in four. timm's layout (state-dict keys .1 and .2). In a stage whose stride became
    dilation (`dilated`) the pool keeps the size, padded right and bottom with zeros, as
    timm's (mmdetection's pools nothing there)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, norm: str,
                 dilated: bool) -> None:
        pool: nn.Module = (_SamePool() if dilated else nn.Identity() if stride == 1 else
                           nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False))
        super().__init__(pool, conv1x1(in_channels, out_channels), build_norm(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_norm(self[1], self[2], self[0](x))


class _SamePool(nn.Module):
    """2x2 average pool of stride 1 that keeps the size (a zero row and column added
    right and bottom, counted: timm's AvgPool2dSame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1)
