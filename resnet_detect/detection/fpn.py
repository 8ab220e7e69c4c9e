"""Feature Pyramid Network: backbone maps res2..res5 -> p2..p5 (+ p6), C channels each.

Lateral 1x1 convs bring every input level to C channels; a top-down pass adds the
nearest-upsampled coarser level; a 3x3 conv smooths each sum. ``LastLevelMaxPool``
adds p6 as a stride-2 subsampling of p5 (used by the RPN only). Output names are
``p<k>`` with k = log2(stride).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from resnet_detect.engine.config import ArgumentError, is_positive_int
from resnet_detect.backbones.conv import Conv2d
from resnet_detect.backbones.layers import ShapeSpec


class LastLevelMaxPool(nn.Module):
    """p6 = max_pool(p5, kernel 1, stride 2): one extra coarser level at no cost."""

    num_levels = 1

    def forward(self, top: Tensor) -> list[Tensor]:
        """Args:
            top: (N, C, H, W) coarsest FPN output.

        Returns:
            One map (N, C, ceil(H/2), ceil(W/2)).
        """
        return [F.max_pool2d(top, kernel_size=1, stride=2, padding=0)]


def _init_conv(conv: nn.Conv2d) -> None:
    # "Xavier" fill of Caffe2/detectron2 and torchvision's FPN: kaiming uniform, a=1.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)


class FPN(nn.Module):
    """Wraps a bottom-up backbone and returns the pyramid.

    Args:
        bottom_up: backbone with ``forward(x) -> dict`` and ``output_shape()``.
        in_features: backbone outputs to use, finest first (e.g. res2..res5).
        out_channels: channels C of every pyramid level.
        top_block: module producing extra coarser levels from the coarsest output, or None.
    """

    def __init__(
        self,
        *,
        bottom_up: nn.Module,
        in_features: Sequence[str],
        out_channels: int,
        top_block: nn.Module | None = None,
    ) -> None:
        super().__init__()
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ArgumentError(
                f"FPN in_features {missing} are not backbone outputs {list(shapes)}")
        strides = [shapes[f].stride for f in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ArgumentError(
                f"FPN needs in_features whose strides double, got {dict(zip(in_features, strides))}"
            )
        if not is_positive_int(out_channels):
            raise ArgumentError(f"FPN out_channels must be a positive integer, got "
                                f"{out_channels!r}")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for name in self.in_features:
            lateral = Conv2d(shapes[name].channels, out_channels, kernel_size=1)
            output = Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
            _init_conv(lateral)
            _init_conv(output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        self.top_block = top_block

        self._out_shapes: dict[str, ShapeSpec] = {}
        for stride in strides:
            self._out_shapes[f"p{int(math.log2(stride))}"] = ShapeSpec(out_channels, stride)
        extra = getattr(top_block, "num_levels", 0) if top_block is not None else 0
        for _ in range(extra):
            stride = strides[-1] * 2 ** (len(self._out_shapes) - len(strides) + 1)
            self._out_shapes[f"p{int(math.log2(stride))}"] = ShapeSpec(out_channels, stride)
        self.size_divisibility = max(int(getattr(bottom_up, "size_divisibility", 0)), strides[-1])

    def output_shape(self) -> dict[str, ShapeSpec]:
        """``{"p2": ShapeSpec(C, 4), ..., "p6": ShapeSpec(C, 64)}``."""
        return dict(self._out_shapes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args:
            x: (N, 3, H, W) normalized, padded images.

        Returns:
            ``{"p2": (N, C, H/4, W/4), ..., "p6": ...}``.
        """
        bottom_up = self.bottom_up(x)
        inputs = [bottom_up[f] for f in self.in_features]
        prev = self.lateral_convs[-1](inputs[-1])
        results = [self.output_convs[-1](prev)]
        for idx in range(len(inputs) - 2, -1, -1):
            lateral = self.lateral_convs[idx](inputs[idx])
            # Upsample to the lateral's exact size (robust to odd sizes, unlike scale_factor=2).
            top_down = F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            prev = lateral + top_down
            results.insert(0, self.output_convs[idx](prev))
        if self.top_block is not None:
            results.extend(self.top_block(results[-1]))
        return dict(zip(self._out_shapes, results))
