"""The ResNet family: stem, BasicBlock, Bottleneck, stages and the ResNet backbone.

Shapes: N images, C channels. The stem maps (N, 3, H, W) to (N, 64, H/4, W/4) for ImageNet nets
(N, 16, H, W) for CIFAR nets); each stage `resK` then halves the resolution unless its stride was
turned into dilation by `output_stride`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resnet_detect.engine.config import ArgumentError, is_positive_int as _positive_int

from .conv import Conv2d
from .fused_conv import conv_norm_relu
from .layers import (AvgDownShortcut, ConvNorm, FrozenBatchNorm2d, ShapeSpec, ZeroPadShortcut,
                     build_norm, conv1x1, conv3x3, conv_norm)

IMAGENET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                   152: (3, 8, 36, 3)}
SHORTCUTS = ("A", "B", "C")
FEATURES = ("stem", "res2", "res3", "res4", "res5")


class ResidualBlock(nn.Module):
    """Base of BasicBlock and Bottleneck: out = relu(shortcut(x) + branch(x)).

    `residual=False` makes the plain twin (out = relu(branch(x))); its `shortcut` is a
    parameter-free module kept only so a lesion (`skip_branch=True`) still has a path.
    `skip_branch=True` deletes the residual branch at test time: out = relu(shortcut(x)).
    `drop_path_rate` > 0 drops the branch per sample while training (stochastic depth).
    `avg_down`: a projection shortcut average-pools before its 1x1 conv (ResNet-D); `dilated`:
    the block is in a stage whose stride became dilation.
    """

    expansion = 1

    def __init__(self, *, in_channels: int, out_channels: int, stride: int, shortcut: str,
                 residual: bool, norm: str, drop_path_rate: float, avg_down: bool = False,
                 dilated: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.residual = residual
        self.drop_path_rate = drop_path_rate
        self.skip_branch = False
        changes_shape = stride != 1 or in_channels != out_channels
        if residual and (shortcut == "C" or (shortcut == "B" and changes_shape)):
            self.shortcut: nn.Module = (
                AvgDownShortcut(in_channels, out_channels, stride=stride, norm=norm,
                                dilated=dilated) if avg_down else
                ConvNorm(conv1x1(in_channels, out_channels, stride=stride),
                         build_norm(norm, out_channels)))
        elif changes_shape:
            self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def branch_inner(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch up to its last convolution and norm (`last_conv_norm`)."""
        raise NotImplementedError

    def last_conv_norm(self) -> tuple[nn.Conv2d, nn.Module]:
        raise NotImplementedError

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return conv_norm(*self.last_conv_norm(), self.branch_inner(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip_branch:
            return F.relu(self.shortcut(x))
        if not self.residual:
            return conv_norm_relu(*self.last_conv_norm(), self.branch_inner(x))
        if self.drop_path_rate > 0 and self.training:
            # imported here: torchvision.ops imports torch._dynamo (1.6 s), which a tool that
            # builds no detector (pretraining, segmentation, --help, an early refusal) skips
            from torchvision.ops import stochastic_depth
            out = stochastic_depth(self.branch(x), self.drop_path_rate, "row", self.training)
            out += self.shortcut(x)  # in place, as torchvision: one allocation less per block
            return F.relu(out, inplace=True)
        # the shortcut added in place (one allocation less per block, as torchvision), or in
        # the last convolution's fused call (fused_conv)
        return conv_norm_relu(*self.last_conv_norm(), self.branch_inner(x),
                              addend=self.shortcut(x))


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""

    expansion = 1

    def __init__(self, *, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 shortcut: str = "B", residual: bool = True, norm: str = "bn",
                 groups: int = 1, width_per_group: int = 64, width: float = 1.0,
                 stride_in_1x1: bool = False, drop_path_rate: float = 0.0,
                 avg_down: bool = False, dilated: bool = False) -> None:
        if groups != 1 or width_per_group != 64:
            raise ArgumentError("BasicBlock supports only groups=1 and width_per_group=64")
        out_channels = int(planes * width)
        super().__init__(in_channels=in_channels, out_channels=out_channels, stride=stride,
                         shortcut=shortcut, residual=residual, norm=norm,
                         drop_path_rate=drop_path_rate, avg_down=avg_down, dilated=dilated)
        self.conv1 = conv3x3(in_channels, out_channels, stride=stride, dilation=dilation)
        self.norm1 = build_norm(norm, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, dilation=dilation)
        self.norm2 = build_norm(norm, out_channels)

    def branch_inner(self, x: torch.Tensor) -> torch.Tensor:
        return conv_norm_relu(self.conv1, self.norm1, x)

    def last_conv_norm(self) -> tuple[nn.Conv2d, nn.Module]:
        return self.conv2, self.norm2


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4 (ResNet-50 and deeper).

    The stride sits on the 3x3 conv (v1.5, torchvision/timm) unless `stride_in_1x1` (v1, MSRA
    and detectron2 weights).
    """

    expansion = 4

    def __init__(self, *, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 shortcut: str = "B", residual: bool = True, norm: str = "bn",
                 groups: int = 1, width_per_group: int = 64, width: float = 1.0,
                 stride_in_1x1: bool = False, drop_path_rate: float = 0.0,
                 avg_down: bool = False, dilated: bool = False) -> None:
        out_channels = planes * self.expansion
        super().__init__(in_channels=in_channels, out_channels=out_channels, stride=stride,
                         shortcut=shortcut, residual=residual, norm=norm,
                         drop_path_rate=drop_path_rate, avg_down=avg_down, dilated=dilated)
        mid = int(planes * width * width_per_group / 64) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, mid, stride=stride_1x1)
        self.norm1 = build_norm(norm, mid)
        self.conv2 = conv3x3(mid, mid, stride=stride_3x3, dilation=dilation, groups=groups)
        self.norm2 = build_norm(norm, mid)
        self.conv3 = conv1x1(mid, out_channels)
        self.norm3 = build_norm(norm, out_channels)

    def branch_inner(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_norm_relu(self.conv1, self.norm1, x)
        return conv_norm_relu(self.conv2, self.norm2, out)

    def last_conv_norm(self) -> tuple[nn.Conv2d, nn.Module]:
        return self.conv3, self.norm3


class Stem(nn.Module):
    """ImageNet stem (7x7/2 conv + 3x3/2 max pool) or CIFAR stem (3x3/1 conv); `deep`: the
    ImageNet stem's 7x7 conv as three 3x3 convs (ResNet-C/D, with half the channels but in the
    last; timm's layout, `conv.0`, `conv.3`, `conv.6` and their norms; the ReLU modules
    `conv.2` and `conv.5` keep its numbering, forward applies them with the convs)."""

    def __init__(self, *, kind: str, out_channels: int, norm: str, deep: bool = False) -> None:
        super().__init__()
        if kind not in ("imagenet", "cifar"):
            raise ArgumentError(f"unknown stem {kind!r}; valid: imagenet, cifar")
        if deep and kind != "imagenet":
            raise ArgumentError(f"deep_stem is an ImageNet stem's; this net's stem is {kind}'s")
        if deep and out_channels < 2:
            raise ArgumentError(f"deep_stem halves stem_channels in its first convs: "
                                f"stem_channels must be 2 or more, got {out_channels}")
        if kind == "cifar":
            self.conv: nn.Module = conv3x3(3, out_channels)
            self.maxpool: nn.Module = nn.Identity()
            self.stride = 1
        else:
            half = out_channels // 2
            self.conv = nn.Sequential(
                conv3x3(3, half, stride=2), build_norm(norm, half), nn.ReLU(inplace=True),
                conv3x3(half, half), build_norm(norm, half), nn.ReLU(inplace=True),
                conv3x3(half, out_channels)) if deep else Conv2d(
                3, out_channels, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.stride = 4
        self.norm = build_norm(norm, out_channels)
        self.out_channels = out_channels

    def conv_norm_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """Each convolution and its norm, in order (each followed by a ReLU)."""
        if isinstance(self.conv, nn.Sequential):
            return [(self.conv[0], self.conv[1]), (self.conv[3], self.conv[4]),
                    (self.conv[6], self.norm)]
        return [(self.conv, self.norm)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in self.conv_norm_pairs():
            x = conv_norm_relu(conv, norm, x)
        if (x.device.type == "cpu" and isinstance(self.maxpool, nn.MaxPool2d)
                and not x.is_contiguous(memory_format=torch.channels_last)
                and not torch.jit.is_tracing()):
            # PyTorch's CPU max pool is several times slower on NCHW maps than on channels-last
            # ones, copies both ways included (BENCHMARKS.md); the result is the same
            return self.maxpool(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return self.maxpool(x)


class ResNet(nn.Module):
    """ResNet backbone: returns `{name: feature map}` for the names in `out_features`.

    Args:
        stage_blocks: blocks per stage (4 stages for ImageNet nets, 3 for CIFAR nets).
        stage_planes: planes per stage (the block width before bottleneck expansion).
        block: "basic" or "bottleneck".
        stem: "imagenet" or "cifar".
        stem_channels: output channels of the stem conv.
        deep_stem: the ImageNet stem's 7x7 conv as three 3x3 convs (ResNet-C, -D).
        avg_down: projection shortcuts average-pool, then a stride-1 1x1 conv (ResNet-D).
        shortcut: "A" zero-pad identity, "B" projection when the shape changes, "C" always.
        residual: False builds the plain twin (no shortcuts).
        output_stride: overall stride of the last stage; larger strides become dilation.
        multi_grid: dilation multipliers for the blocks of the last stage (DeepLabV3).
        norm: "bn", "frozen_bn", "gn" or "syncbn".
        freeze_at: 0 trains everything, 1 freezes the stem, k freezes the stem and res2..resk.
        stride_in_1x1: put the stride of bottlenecks on the 1x1 conv (v1/MSRA weights).
        groups, width_per_group: ResNeXt cardinality and group width.
        width: multiplier of the block width (wide ResNets).
        drop_path_rate: stochastic depth, rising linearly from 0 to this rate over the blocks.
        out_features: which of stem, res2..res5 forward returns.
        zero_init_residual: each block's last norm starts at weight 0, so that every block
            starts as its shortcut (Goyal et al. 2017; torchvision's option of this name).
    """

    def __init__(self, *, stage_blocks: Sequence[int], stage_planes: Sequence[int],
                 block: str, stem: str = "imagenet", stem_channels: int = 64,
                 shortcut: str = "B", residual: bool = True, output_stride: int | None = None,
                 multi_grid: Sequence[int] | None = None, norm: str = "bn", freeze_at: int = 0,
                 stride_in_1x1: bool = False, groups: int = 1, width_per_group: int = 64,
                 width: float = 1.0, drop_path_rate: float = 0.0,
                 out_features: Sequence[str] | None = None,
                 zero_init_residual: bool = False, deep_stem: bool = False,
                 avg_down: bool = False) -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ArgumentError(f"unknown block {block!r}; valid: basic, bottleneck")
        if shortcut not in SHORTCUTS:
            raise ArgumentError(f"unknown shortcut {shortcut!r}; valid: {', '.join(SHORTCUTS)}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ArgumentError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        for key, value in (("groups", groups), ("width_per_group", width_per_group),
                           ("stem_channels", stem_channels)):
            if not _positive_int(value):
                raise ArgumentError(f"{key} must be a positive integer, got {value!r}")
        if not (isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0):
            raise ArgumentError(f"width must be a number > 0 (a factor of the channels), got "
                                f"{width!r}")
        block_cls = BasicBlock if block == "basic" else Bottleneck
        if avg_down and shortcut == "A":
            raise ArgumentError("avg_down pools in projection shortcuts; shortcut A has none: "
                                "use B or C")
        self.stem = Stem(kind=stem, out_channels=stem_channels, norm=norm, deep=deep_stem)
        natural_stride = self.stem.stride * 2 ** (len(stage_blocks) - 1)
        valid_strides = (natural_stride // 4, natural_stride // 2, natural_stride)
        output_stride = output_stride or natural_stride
        if output_stride not in valid_strides:
            raise ArgumentError(f"output_stride {output_stride} is not valid for this net; "
                                f"valid: {', '.join(map(str, valid_strides))}")
        if multi_grid is not None and len(multi_grid) != stage_blocks[-1]:
            raise ArgumentError(f"multi_grid {list(multi_grid)} must have one entry per block of "
                                f"the last stage ({stage_blocks[-1]})")
        if multi_grid is not None and not all(_positive_int(m) for m in multi_grid):
            raise ArgumentError(f"multi_grid {list(multi_grid)} must be positive integers "
                                f"(dilation multipliers)")

        self.stages: list[str] = []
        self._shapes = {"stem": ShapeSpec(stem_channels, self.stem.stride)}
        total_blocks, block_index = sum(stage_blocks), 0
        in_channels, stride_so_far, dilation = stem_channels, self.stem.stride, 1
        for i, (num_blocks, planes) in enumerate(zip(stage_blocks, stage_planes)):
            name = f"res{i + 2}"
            stage_stride = 1 if i == 0 else 2
            first_dilation = dilation
            if stride_so_far * stage_stride > output_stride:
                dilation *= stage_stride
                stage_stride = 1
            dilations = [dilation] * num_blocks
            # torchvision keeps the previous dilation on the first block of a dilated stage.
            dilations[0] = first_dilation
            if multi_grid is not None and i == len(stage_blocks) - 1:
                dilations = [dilation * m for m in multi_grid]
            blocks = []
            for j in range(num_blocks):
                rate = drop_path_rate * block_index / max(total_blocks - 1, 1)
                blocks.append(block_cls(
                    in_channels=in_channels, planes=planes, stride=stage_stride if j == 0 else 1,
                    dilation=dilations[j], shortcut=shortcut, residual=residual, norm=norm,
                    groups=groups, width_per_group=width_per_group, width=width,
                    stride_in_1x1=stride_in_1x1, drop_path_rate=rate, avg_down=avg_down,
                    dilated=dilation > 1))
                in_channels = blocks[-1].out_channels
                block_index += 1
            stride_so_far *= stage_stride
            self.add_module(name, nn.Sequential(*blocks))
            self.stages.append(name)
            self._shapes[name] = ShapeSpec(in_channels, stride_so_far)

        if isinstance(out_features, str):  # (not its characters)
            raise ArgumentError(f"out_features is a list of stage names, got the string "
                                f"{out_features!r}: write [{out_features!r}]")
        self.out_features = tuple(out_features or (self.stages[-1],))
        unknown = [f for f in self.out_features if f not in self._shapes]
        if unknown:
            raise ArgumentError(f"out_features {unknown} are not stages of this net; valid: "
                                f"{', '.join(self._shapes)}")
        self.size_divisibility = stride_so_far
        self._init_weights(zero_init_residual)
        self.freeze(freeze_at)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "norm3", None) if isinstance(m, Bottleneck) else \
                    getattr(m, "norm2", None) if isinstance(m, BasicBlock) else None
                if last is not None and getattr(last, "weight", None) is not None:
                    nn.init.zeros_(last.weight)

    def freeze(self, at: int) -> "ResNet":
        """Freeze the stem (at >= 1) and stages res2..res{at}: no gradients, frozen BN stats."""
        if not 0 <= at <= len(self.stages) + 1:
            raise ValueError(f"freeze_at must be in 0..{len(self.stages) + 1}, got {at}")
        self.freeze_at = at
        frozen = (["stem"] + self.stages)[:at]
        for name in frozen:
            module = FrozenBatchNorm2d.convert(getattr(self, name))
            setattr(self, name, module)
            for p in module.parameters():
                p.requires_grad_(False)
        return self

    def drop_unused_stages(self) -> "ResNet":
        """Delete the stages after the deepest of `out_features`: forward never runs them, and
        parameters without gradients make DistributedDataParallel fail. Load pretrained
        weights (a whole ResNet) before: the dropped stages' keys are then expected no more."""
        last = max(FEATURES.index(f) for f in self.out_features)
        for name in self.stages[last:]:
            delattr(self, name)
            del self._shapes[name]
        self.stages = self.stages[:last]
        self.size_divisibility = max(self._shapes[f].stride for f in self.out_features)
        return self

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: self._shapes[name] for name in self.out_features}

    def blocks(self) -> list[ResidualBlock]:
        """All residual blocks in network order."""
        return [b for name in self.stages for b in getattr(self, name)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        x = self.stem(x)
        if "stem" in self.out_features:
            outputs["stem"] = x
        last = max(FEATURES.index(f) for f in self.out_features)
        for name in self.stages[: last]:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs
