"""Semantic segmentation heads: FCN, ASPP / DeepLabV3 and the DeepLabV3+ decoder.

Shapes: N images, K classes (background included), C channels, (h, w) the size of the
feature map a head reads, (H, W) the size the logits are upsampled to (the padded input).
A head maps `{name: (N, C, h, w)}` to logits (N, K, h, w), upsamples them bilinearly to
(N, K, H, W) and, given ground truth (N, H, W) int64 with `ignore_index` on pixels that do
not count, returns its cross-entropy loss under a stable `loss_*` key.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from resnet_detect.engine.config import ArgumentError
from resnet_detect.backbones.conv import Conv2d
from resnet_detect.backbones.layers import build_norm
from resnet_detect.segmentation.upsample import upsample_bilinear

# ASPP dilation rates per backbone output stride (DeepLabV3, Chen et al. 2017, section 4.1):
# the rates double when the features are twice as dense, and halve at output stride 32.
ASPP_RATES: dict[int, tuple[int, int, int]] = {32: (3, 6, 9), 16: (6, 12, 18), 8: (12, 24, 36)}


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """The ASPP rates for a backbone of this output stride: 3/6/9 at 32, 6/12/18 at 16,
    12/24/36 at 8."""
    if output_stride not in ASPP_RATES:
        raise ArgumentError(f"no default ASPP rates for output_stride {output_stride}; valid: "
                            f"{', '.join(map(str, ASPP_RATES))} (or give the rates explicitly)")
    return ASPP_RATES[output_stride]


class ConvNormReLU(nn.Module):
    """conv (no bias) -> norm -> ReLU, with 'same' padding for any dilation."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 1,
                 dilation: int = 1, groups: int = 1, norm: str = "bn") -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        # undilated convs take the project's CPU routes (Winograd on AVX2); ASPP's dilated
        # branches keep PyTorch's, faster there (BENCHMARKS.md)
        conv = Conv2d if dilation == 1 else nn.Conv2d
        self.conv = conv(in_channels, out_channels, kernel_size, padding=padding,
                         dilation=dilation, groups=groups, bias=False)
        self.norm = build_norm(norm, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)), inplace=True)


class SeparableConvNormReLU(nn.Sequential):
    """Depthwise separable conv: a depthwise k x k conv-norm-ReLU, then a 1x1 conv-norm-ReLU.

    The DeepLabV3+ paper's ASPP and decoder convs (mmsegmentation's
    DepthwiseSeparableConvModule, detectron2's DepthwiseSeparableConv2d): about k * k times
    fewer multiply-adds than a full k x k conv.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 3,
                 dilation: int = 1, norm: str = "bn") -> None:
        super().__init__(
            ConvNormReLU(in_channels, in_channels, kernel_size=kernel_size, dilation=dilation,
                         groups=in_channels, norm=norm),
            ConvNormReLU(in_channels, out_channels, norm=norm))


def conv3x3_norm_relu(in_channels: int, out_channels: int, *, dilation: int = 1,
                      norm: str = "bn", separable: bool = False) -> nn.Module:
    """A 3x3 conv-norm-ReLU, full or depthwise separable."""
    kind = SeparableConvNormReLU if separable else ConvNormReLU
    return kind(in_channels, out_channels, kernel_size=3, dilation=dilation, norm=norm)


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average pool, 1x1 conv-norm-ReLU, broadcast back.

    (N, C_in, h, w) -> (N, C_out, 1, 1) -> (N, C_out, h, w). A training batch of one image
    (one per process, or the only readable one of its batch) has one pooled value per channel,
    no batch statistics: BatchNorm then uses its running statistics, without updating them.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "bn") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = build_norm(norm, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        norm = self.norm
        if (self.training and len(pooled) == 1 and isinstance(norm, nn.modules.batchnorm._BatchNorm)
                and not (isinstance(norm, nn.SyncBatchNorm) and dist.is_available()
                         and dist.is_initialized() and dist.get_world_size() > 1)):
            pooled = F.batch_norm(pooled, norm.running_mean, norm.running_var, norm.weight,
                                  norm.bias, False, 0.0, norm.eps)
        else:
            pooled = norm(pooled)
        pooled = F.relu(pooled)
        # bilinear from 1x1 is a broadcast; written as interpolate to match torchvision exactly
        return upsample_bilinear(pooled, size)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate, image pooling.

    (N, C_in, h, w) -> concat of 2 + len(rates) branches (N, (2 + R) * C, h, w)
    -> 1x1 projection -> dropout -> (N, C, h, w).

    Args:
        in_channels: channels of the input map.
        rates: dilation rates of the 3x3 branches (see `aspp_rates`).
        out_channels: channels of every branch and of the output.
        norm: normalization layer name ("bn", "gn", "syncbn", "frozen_bn").
        dropout: dropout probability after the projection.
        separable: depthwise separable 3x3 branches (`SeparableConvNormReLU`).
    """

    def __init__(self, *, in_channels: int, rates: Sequence[int], out_channels: int = 256,
                 norm: str = "bn", dropout: float = 0.5, separable: bool = False) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        if not self.rates or min(self.rates) < 1:
            raise ArgumentError(f"ASPP rates must be positive integers, got {list(rates)}")
        branches = [ConvNormReLU(in_channels, out_channels, norm=norm)]
        branches += [conv3x3_norm_relu(in_channels, out_channels, dilation=r, norm=norm,
                                       separable=separable) for r in self.rates]
        self.branches = nn.ModuleList(branches)
        self.pooling = ImagePooling(in_channels, out_channels, norm=norm)
        self.project = ConvNormReLU((len(branches) + 1) * out_channels, out_channels, norm=norm)
        self.dropout = nn.Dropout(dropout)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        outputs = [branch(x) for branch in self.branches] + [self.pooling(x)]
        return self.dropout(self.project(torch.cat(outputs, dim=1)))


class SemSegHead(nn.Module):
    """Base of the heads: `layers` gives low-resolution logits; forward upsamples and scores.

    Args:
        num_classes: K, background included.
        loss_name: key of the loss in the returned dict (e.g. "loss_sem_seg", "loss_aux").
        loss_weight: factor on the cross-entropy.
        ignore_index: ground-truth value that does not count in the loss.
        class_weight: each class's weight in the cross-entropy (K numbers), or None.
    """

    in_features: tuple[str, ...]

    def __init__(self, *, num_classes: int, loss_name: str = "loss_sem_seg",
                 loss_weight: float = 1.0, ignore_index: int = 255,
                 class_weight: Sequence[float] | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ArgumentError(f"num_classes must be >= 1, got {num_classes}")
        if not loss_name.startswith("loss_"):
            raise ArgumentError(f"loss_name must start with 'loss_', got {loss_name!r}")
        self.num_classes = num_classes
        self.loss_name = loss_name
        self.loss_weight = float(loss_weight)
        self.ignore_index = ignore_index
        if class_weight is not None and len(class_weight) != num_classes:
            raise ArgumentError(f"class_weight has {len(class_weight)} weights for "
                                f"{num_classes} classes")
        # not in the state dict: weights trained with or without it load alike
        self.register_buffer("class_weight", None if class_weight is None else
                             torch.tensor(class_weight, dtype=torch.float32), persistent=False)

    def layers(self, features: Mapping[str, Tensor]) -> Tensor:
        """Logits (N, K, h, w) at the resolution of the features read."""
        raise NotImplementedError

    def forward(self, features: Mapping[str, Tensor], output_size: tuple[int, int],
                gt_sem_seg: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits upsampled to `output_size` and, given ground truth, the loss.

        Args:
            features: backbone maps by name.
            output_size: (H, W) to upsample the logits to (the padded input size).
            gt_sem_seg: (N, H, W) int64 class ids, `ignore_index` where not scored.

        Returns:
            (logits (N, K, H, W), {loss_name: scalar} or {} without ground truth).
        """
        logits = upsample_bilinear(self.layers(features), output_size)
        if gt_sem_seg is None:
            return logits, {}
        return logits, {self.loss_name: self.loss_weight * self.loss(logits, gt_sem_seg)}

    def loss(self, logits: Tensor, gt_sem_seg: Tensor) -> Tensor:
        """Cross-entropy summed over the pixels that are not `ignore_index`, each weighted by
        its class's `class_weight` where given, divided by their count (mmsegmentation's
        avg_non_ignore=True; torchvision's mean without weights); 0 if there are none."""
        if gt_sem_seg.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"ground truth {tuple(gt_sem_seg.shape)} does not match logits "
                             f"{tuple(logits.shape)} (expected (N, H, W))")
        # reduction="sum" / count keeps an all-ignored batch at 0 instead of NaN
        weight = None if self.class_weight is None else self.class_weight.float()
        total = F.cross_entropy(logits.float(), gt_sem_seg, weight=weight,
                                ignore_index=self.ignore_index, reduction="sum")
        count = (gt_sem_seg != self.ignore_index).sum().clamp(min=1)
        return total / count


class FCNHead(SemSegHead):
    """FCN head (torchvision's): 3x3 conv-norm-ReLU, dropout, 1x1 classifier.

    (N, C_in, h, w) -> (N, channels, h, w) -> (N, K, h, w). Also the auxiliary head on res4.

    Args:
        in_feature: name of the feature map it reads ("res5"; "res4" as auxiliary head).
        in_channels: its channels.
        channels: hidden channels (torchvision: in_channels // 4).
        norm: normalization layer name.
        dropout: dropout probability before the classifier.
        **kwargs: `SemSegHead` arguments (num_classes, loss_name, loss_weight, ignore_index).
    """

    def __init__(self, *, in_feature: str, in_channels: int, channels: int | None = None,
                 norm: str = "bn", dropout: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        channels = channels or in_channels // 4
        self.in_features = (in_feature,)
        self.conv = ConvNormReLU(in_channels, channels, kernel_size=3, norm=norm)
        self.dropout = nn.Dropout(dropout)
        self.predictor = nn.Conv2d(channels, self.num_classes, 1)

    def layers(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.predictor(self.dropout(self.conv(features[self.in_features[0]])))


class DeepLabV3Head(SemSegHead):
    """DeepLabV3 head (torchvision's): ASPP, 3x3 conv-norm-ReLU, 1x1 classifier.

    (N, C_in, h, w) -> ASPP (N, channels, h, w) -> (N, channels, h, w) -> (N, K, h, w).

    Args:
        in_feature: name of the feature map it reads (usually "res5").
        in_channels: its channels.
        rates: ASPP dilation rates (see `aspp_rates`).
        channels: channels of ASPP and of the 3x3 conv.
        norm: normalization layer name.
        aspp_dropout: dropout after the ASPP projection.
        separable: depthwise separable 3x3 convs in ASPP and after it.
        **kwargs: `SemSegHead` arguments.
    """

    def __init__(self, *, in_feature: str, in_channels: int, rates: Sequence[int],
                 channels: int = 256, norm: str = "bn", aspp_dropout: float = 0.5,
                 separable: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.in_features = (in_feature,)
        self.aspp = ASPP(in_channels=in_channels, rates=rates, out_channels=channels, norm=norm,
                         dropout=aspp_dropout, separable=separable)
        self.fuse = conv3x3_norm_relu(channels, channels, norm=norm, separable=separable)
        self.predictor = nn.Conv2d(channels, self.num_classes, 1)

    def layers(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.predictor(self.fuse(self.aspp(features[self.in_features[0]])))


class DeepLabV3PlusHead(SemSegHead):
    """DeepLabV3+ (Chen et al. 2018): ASPP on the deep map, a decoder fusing a shallow map.

    ASPP (N, channels, h, w) is upsampled to the shallow map's (h2, w2) (res2: stride 4),
    concatenated with its 1x1 projection (N, low_level_channels, h2, w2), refined by two
    3x3 conv-norm-ReLU and classified: (N, K, h2, w2).

    Args:
        in_feature: the deep map ("res5").
        in_channels: its channels.
        low_level_feature: the shallow map ("res2").
        low_level_in_channels: its channels.
        rates: ASPP dilation rates.
        channels: channels of ASPP and of the decoder convs.
        low_level_channels: channels of the projected shallow map (48 in the paper).
        norm: normalization layer name.
        aspp_dropout: dropout after the ASPP projection.
        dropout: dropout before the classifier.
        separable: depthwise separable 3x3 convs in ASPP and the decoder (the paper's).
        **kwargs: `SemSegHead` arguments.
    """

    def __init__(self, *, in_feature: str, in_channels: int, low_level_feature: str,
                 low_level_in_channels: int, rates: Sequence[int], channels: int = 256,
                 low_level_channels: int = 48, norm: str = "bn", aspp_dropout: float = 0.5,
                 dropout: float = 0.1, separable: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.in_features = (in_feature, low_level_feature)
        self.aspp = ASPP(in_channels=in_channels, rates=rates, out_channels=channels, norm=norm,
                         dropout=aspp_dropout, separable=separable)
        self.low_level_project = ConvNormReLU(low_level_in_channels, low_level_channels,
                                              norm=norm)
        self.fuse = nn.Sequential(
            conv3x3_norm_relu(channels + low_level_channels, channels, norm=norm,
                              separable=separable),
            conv3x3_norm_relu(channels, channels, norm=norm, separable=separable))
        self.dropout = nn.Dropout(dropout)
        self.predictor = nn.Conv2d(channels, self.num_classes, 1)

    def layers(self, features: Mapping[str, Tensor]) -> Tensor:
        deep, shallow = (features[name] for name in self.in_features)
        shallow = self.low_level_project(shallow)
        deep = upsample_bilinear(self.aspp(deep), shallow.shape[-2:])
        return self.predictor(self.dropout(self.fuse(torch.cat([deep, shallow], dim=1))))
