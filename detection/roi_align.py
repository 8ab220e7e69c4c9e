"""RoIAlign whose CPU backward is a sparse matrix product instead of torchvision's loop.

The forward is ``torchvision.ops.roi_align`` itself (same outputs, bit for bit). Its CPU
backward walks every (RoI, channel, bin, sample) on one thread and recomputes the bilinear
weights for each channel; on the CPU quickstarts that loop was 20-28 % of a training step.
RoIAlign is linear in the features, and with a fixed sampling ratio its weights factor into a
y part and an x part per bin, so here the backward builds the (features x bins) weight matrix
once per call, as a sparse COO matrix with at most (2 * sampling_ratio)^2 entries per bin,
and multiplies the incoming gradient by it (all channels at once, multi-threaded). Same
gradient up to float32 summation order; measured in BENCHMARKS.md.

GPU tensors, the adaptive sampling ratio (0: a sample count per RoI) and inference keep
torchvision's op.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align


def _axis_weights(start: Tensor, size: Tensor, bins: int, grid: int,
                  length: int) -> tuple[Tensor, Tensor]:
    """Bilinear taps along one axis, torchvision's CPU kernel rule by rule.

    Args:
        start, size: (R,) RoI start and extent on this axis, in feature-map cells.
        bins: pooled bins on this axis; grid: samples per bin; length: feature-map size.

    Returns:
        index (R, bins, 2 * grid) int64 and weight (R, bins, 2 * grid): each sample's low and
        high neighbour, weights already divided by `grid` (the bin average).
    """
    bin_size = size / bins
    b = torch.arange(bins, dtype=start.dtype, device=start.device)
    s = torch.arange(grid, dtype=start.dtype, device=start.device)
    coord = (start[:, None, None] + b[None, :, None] * bin_size[:, None, None]
             + (s[None, None, :] + 0.5) * bin_size[:, None, None] / grid)
    valid = (coord >= -1.0) & (coord <= length)  # samples outside contribute nothing
    coord = coord.clamp(min=0.0)
    low = coord.to(torch.int64)
    at_end = low >= length - 1
    low = low.clamp(max=length - 1)
    high = torch.where(at_end, low, low + 1)
    coord = torch.where(at_end, low.to(coord.dtype), coord)
    frac = coord - low.to(coord.dtype)
    scale = valid.to(coord.dtype) / grid
    return torch.cat([low, high], -1), torch.cat([(1.0 - frac) * scale, frac * scale], -1)


def roi_align_input_grad(grad_output: Tensor, rois: Tensor, input_shape: torch.Size,
                         spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """d(loss)/d(input) of ``roi_align(input, rois, ...)`` given d(loss)/d(output).

    Args:
        grad_output: (R, C, PH, PW) float32.
        rois: (R, 5) ``(batch_index, x1, y1, x2, y2)``, input-image pixels.
        input_shape: (N, C, H, W) of the features.
        spatial_scale, sampling_ratio (> 0), aligned: as given to roi_align.

    Returns:
        (N, C, H, W) float32 gradient (channels-last strides).
    """
    n, c, h, w = input_shape
    r, _, ph, pw = grad_output.shape
    rois = rois.to(torch.float32)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, k] * spatial_scale - offset for k in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision: legacy RoIs are at least one cell wide
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    iy, wy = _axis_weights(y1, roi_h, ph, sampling_ratio, h)
    ix, wx = _axis_weights(x1, roi_w, pw, sampling_ratio, w)
    image = rois[:, 0].to(torch.int64)
    # entry (feature cell, bin) for every bin (r, i, j) and tap pair (ky, kx)
    cell = ((image[:, None, None, None, None] * h + iy[:, :, None, :, None]) * w
            + ix[:, None, :, None, :])
    weight = wy[:, :, None, :, None] * wx[:, None, :, None, :]
    bin_index = torch.arange(r * ph * pw, device=grad_output.device).view(r, ph, pw, 1, 1)
    indices = torch.stack([cell.reshape(-1), bin_index.expand_as(cell).reshape(-1)])
    matrix = torch.sparse_coo_tensor(indices, weight.reshape(-1), (n * h * w, r * ph * pw),
                                     check_invariants=False)
    grad_bins = grad_output.permute(0, 2, 3, 1).reshape(r * ph * pw, c)
    return torch.sparse.mm(matrix, grad_bins).view(n, h, w, c).permute(0, 3, 1, 2)


class _RoIAlignSparseBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, features: Tensor, rois: Tensor, output_size: tuple[int, int],
                spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.args = (features.shape, features.dtype, spatial_scale, sampling_ratio, aligned)
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        shape, dtype, spatial_scale, sampling_ratio, aligned = ctx.args
        grad = roi_align_input_grad(grad_output.float(), rois, shape, spatial_scale,
                                    sampling_ratio, aligned)
        return grad.to(dtype), None, None, None, None, None


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int],
              spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """``torchvision.ops.roi_align`` with the sparse backward where it applies (see above).

    Args:
        features: (N, C, H, W).
        rois: (R, 5) ``(batch_index, x1, y1, x2, y2)``.
    """
    if (features.device.type == "cpu" and sampling_ratio > 0 and torch.is_grad_enabled()
            and features.requires_grad):
        return _RoIAlignSparseBackward.apply(features, rois, output_size, spatial_scale,
                                             sampling_ratio, aligned)
    return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
