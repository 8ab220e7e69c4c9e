"""RoIAlign on the CPU as gathers of whole channel vectors, with a sparse-matrix backward.

torchvision's CPU kernel walks every (RoI, channel, bin, sample) on one thread, reading NCHW
maps (a channels-last map is first copied to NCHW). RoIAlign is linear in the features: each
bin is a weighted sum of (2 * grid)^2 feature cells, and its bilinear weights factor into a y
part and an x part. So here the forward gathers those cells as rows of the channels-last map
(all channels at once: ``embedding_bag`` with per-sample weights, grouping RoIs by their
sample grid when the sampling ratio is adaptive), and the backward (fixed sampling ratio)
builds the (features x bins) weight matrix once per call, as a sparse COO matrix, and
multiplies the incoming gradient by it. Same values up to float32 summation order; measured
in BENCHMARKS.md. Several FPN levels pool into one output through one autograd Function
(``multilevel_roi_align``), so that no level's output or gradient is copied whole.

GPU tensors, tracing (ONNX export keeps torchvision's op) and the gradient of the adaptive
sampling ratio keep torchvision's op.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

MAX_TAPS = 1 << 22  # per gather call: 32 MiB of int64 rows, 16 (float32) / 32 MiB of weights


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


def _roi_geometry(rois: Tensor, spatial_scale: float, aligned: bool,
                  dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Image index, start (x1, y1) and extent (w, h) of each RoI in feature-map cells."""
    rois = rois.to(dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, k] * spatial_scale - offset for k in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision: legacy RoIs are at least one cell wide
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    return rois[:, 0].to(torch.int64), x1, y1, roi_w, roi_h


def _taps(image: Tensor, x1: Tensor, y1: Tensor, roi_w: Tensor, roi_h: Tensor,
          bins: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]
          ) -> tuple[Tensor, Tensor]:
    """Row of the (N*H*W, C) feature table and weight of every tap of every bin.

    Returns (R, PH, PW, 2 * grid_h, 2 * grid_w) int64 rows and float32 weights.
    """
    (ph, pw), (gh, gw), (h, w) = bins, grid, size
    iy, wy = _axis_weights(y1, roi_h, ph, gh, h)
    ix, wx = _axis_weights(x1, roi_w, pw, gw, w)
    rows = ((image[:, None, None, None, None] * h + iy[:, :, None, :, None]) * w
            + ix[:, None, :, None, :])
    return rows, wy[:, :, None, :, None] * wx[:, None, :, None, :]


def roi_align_gather(features: Tensor, rois: Tensor, output_size: tuple[int, int],
                     spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """``torchvision.ops.roi_align``'s values, computed as weighted gathers of feature rows.

    Returns (R, C, PH, PW) in the features' dtype, channels-last strides.
    """
    bins = _gather_bins(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return bins.permute(0, 3, 1, 2).to(features.dtype)


def _gather_bins(features: Tensor, rois: Tensor, output_size: tuple[int, int],
                 spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """roi_align_gather's values as (R, PH, PW, C), float32 (float64 for float64 features)."""
    n, c, h, w = features.shape
    ph, pw = output_size
    dtype = torch.promote_types(features.dtype, torch.float32)  # bf16 as torchvision: float32
    table = features.permute(0, 2, 3, 1).reshape(n * h * w, c).to(dtype)
    image, x1, y1, roi_w, roi_h = _roi_geometry(rois, spatial_scale, aligned, dtype)
    if sampling_ratio > 0:
        grids = torch.full((2, len(rois)), sampling_ratio, dtype=torch.int64)
    else:  # adaptive, as torchvision: ceil(extent / bins) samples per bin and axis, per RoI
        grids = torch.stack([torch.ceil(roi_h / ph), torch.ceil(roi_w / pw)]).to(torch.int64)
        grids = grids.clamp(min=0)  # an inverted RoI (aligned) has no samples
    group_of = grids[0] * (grids[1].max() + 1) + grids[1] if len(rois) else grids[0]
    pieces = []  # (RoI indices, sample grid) of each gather
    for group in torch.unique(group_of).tolist():
        members = (group_of == group).nonzero().squeeze(1)
        gh, gw = (int(g) for g in grids[:, members[0]])
        if gh == 0 or gw == 0:  # no samples: torchvision gives zeros
            continue
        # large RoIs on a fine map have many taps: bound the index tensors' memory
        pieces += [(chunk, (gh, gw))
                   for chunk in members.split(max(1, MAX_TAPS // (ph * pw * 4 * gh * gw)))]
    geometry = (image, x1, y1, roi_w, roi_h)
    if len(pieces) == 1 and len(pieces[0][0]) == len(rois):  # one gather is the whole output
        out = _pool(table, list(geometry), output_size, pieces[0][1], (h, w))
    else:
        out = table.new_zeros(len(rois), ph, pw, c)
        for chunk, grid in pieces:
            out[chunk] = _pool(table, [t[chunk] for t in geometry], output_size, grid, (h, w))
    return out


def _pool(table: Tensor, geometry: list[Tensor], bins: tuple[int, int], grid: tuple[int, int],
          size: tuple[int, int]) -> Tensor:
    """(R, PH, PW, C) bins of RoIs that share one sample grid, gathered from the (N*H*W, C)
    table; geometry: their image, x1, y1, width and height (_roi_geometry)."""
    rows, weights = _taps(*geometry, bins, grid, size)
    bags = rows.shape[0] * bins[0] * bins[1]
    pooled = torch.nn.functional.embedding_bag(
        rows.reshape(bags, -1), table, per_sample_weights=weights.reshape(bags, -1), mode="sum")
    return pooled.view(-1, bins[0], bins[1], table.shape[1])


def roi_align_input_grad(grad_output: Tensor, rois: Tensor, input_shape: torch.Size,
                         spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """d(loss)/d(input) of ``roi_align(input, rois, ...)`` given d(loss)/d(output).

    Args:
        grad_output: (R, C, PH, PW) float32 or float64.
        rois: (R, 5) ``(batch_index, x1, y1, x2, y2)``, input-image pixels.
        input_shape: (N, C, H, W) of the features.
        spatial_scale, sampling_ratio (> 0), aligned: as given to roi_align.

    Returns:
        (N, C, H, W) gradient in grad_output's dtype (channels-last strides).
    """
    return _input_grad_from_bins(grad_output.permute(0, 2, 3, 1), rois, input_shape,
                                 spatial_scale, sampling_ratio, aligned)


def _input_grad_from_bins(grad_bins: Tensor, rois: Tensor, input_shape: torch.Size,
                          spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """roi_align_input_grad with the output gradient given as (R, PH, PW, C)."""
    n, c, h, w = input_shape
    r, ph, pw, _ = grad_bins.shape
    image, x1, y1, roi_w, roi_h = _roi_geometry(rois, spatial_scale, aligned, grad_bins.dtype)
    # entry (feature cell, bin) for every bin (r, i, j) and tap pair (ky, kx)
    cell, weight = _taps(image, x1, y1, roi_w, roi_h, (ph, pw),
                         (sampling_ratio, sampling_ratio), (h, w))
    bin_index = torch.arange(r * ph * pw, device=grad_bins.device).view(r, ph, pw, 1, 1)
    indices = torch.stack([cell.reshape(-1), bin_index.expand_as(cell).reshape(-1)])
    # torch before 2.14 warns of unchecked invariants even when told not to check, unless
    # the global setting is given explicitly
    with torch.sparse.check_sparse_tensor_invariants(enable=False):
        matrix = torch.sparse_coo_tensor(indices, weight.reshape(-1),
                                         (n * h * w, r * ph * pw), check_invariants=False)
    grad_bins = grad_bins.reshape(r * ph * pw, c)
    # in place into one zeroed table: torch.sparse.mm zero-fills a second table of the whole
    # map for its result (at 800 px, two fresh 111 MB buffers per step for the finest level)
    grad = grad_bins.new_zeros(n * h * w, c).addmm_(matrix, grad_bins)
    return grad.view(n, h, w, c).permute(0, 3, 1, 2)


class _RoIAlignSparseBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, features: Tensor, rois: Tensor, output_size: tuple[int, int],
                spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.args = (features.shape, features.dtype, spatial_scale, sampling_ratio, aligned)
        return roi_align_gather(features, rois, output_size, spatial_scale, sampling_ratio,
                                aligned)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        shape, dtype, spatial_scale, sampling_ratio, aligned = ctx.args
        grad = roi_align_input_grad(grad_output.to(torch.promote_types(dtype, torch.float32)),
                                    rois, shape, spatial_scale, sampling_ratio, aligned)
        return grad.to(dtype), None, None, None, None, None


class _MultiLevelRoIAlign(torch.autograd.Function):
    """RoIs pooled each from its own level into one NCHW output; the backward takes each
    level's rows of the output gradient straight to that level's sparse product (no zeroed
    output per level, no full-size copies of the output gradient)."""

    @staticmethod
    def forward(ctx: Any, rois: Tensor, level_rows: list[Tensor], output_size: tuple[int, int],
                scales: list[float], sampling_ratio: int, aligned: bool,
                *features: Tensor) -> Tensor:
        ctx.save_for_backward(rois, *level_rows)
        ctx.args = ([(f.shape, f.dtype) for f in features], scales, sampling_ratio, aligned)
        out = features[0].new_zeros((len(rois), features[0].shape[1]) + tuple(output_size))
        bins_view = out.permute(0, 2, 3, 1)  # (R, PH, PW, C) view of the NCHW output
        for feature, rows, scale in zip(features, level_rows, scales):
            if len(rows):
                bins_view[rows] = _gather_bins(feature, rois[rows], output_size, scale,
                                               sampling_ratio, aligned).to(out.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        rois, *level_rows = ctx.saved_tensors
        levels, scales, sampling_ratio, aligned = ctx.args
        grad_bins = grad_output.permute(0, 2, 3, 1)
        grads: list[Tensor | None] = []
        for (shape, dtype), rows, scale in zip(levels, level_rows, scales):
            if not ctx.needs_input_grad[6 + len(grads)] or not len(rows):
                grads.append(None)
                continue
            bins = grad_bins[rows].to(torch.promote_types(dtype, torch.float32))
            grads.append(_input_grad_from_bins(bins, rois[rows], shape, scale, sampling_ratio,
                                               aligned).to(dtype))
        return (None,) * 6 + tuple(grads)


def multilevel_roi_align(features: Sequence[Tensor], rois: Tensor, level_rows: Sequence[Tensor],
                         output_size: tuple[int, int], scales: Sequence[float],
                         sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIs ``level_rows[l]`` pooled from ``features[l]`` (``roi_align`` on each level).

    Args:
        features: one (N, C, H_l, W_l) map per level.
        rois: (R, 5) ``(batch_index, x1, y1, x2, y2)``.
        level_rows: per level, the int64 indices of its RoIs; together every RoI once.

    Returns:
        (R, C, PH, PW), contiguous, in the features' dtype.
    """
    needs_grad = torch.is_grad_enabled() and any(f.requires_grad for f in features)
    if (features[0].device.type == "cpu" and not torch.jit.is_tracing()
            and (sampling_ratio > 0 or not needs_grad)):
        return _MultiLevelRoIAlign.apply(rois, list(level_rows), output_size, list(scales),
                                         sampling_ratio, aligned, *features)
    if torch.jit.is_tracing():
        # the levels' pools in level order, then back in the RoIs' order: a graph that writes
        # each level into its rows (index_put) kept the example's count where one RoI was
        # pooled (a Reshape to (C, S, S)), and failed on any other count
        pooled = torch.cat([roi_align(feature, rois[rows], output_size, scale, sampling_ratio,
                                      aligned) for feature, rows, scale
                            in zip(features, level_rows, scales)])
        return pooled[torch.argsort(torch.cat(list(level_rows)))]
    # rois.shape[0], not len(rois): a traced graph keeps the RoI count dynamic
    out = features[0].new_zeros((rois.shape[0], features[0].shape[1]) + tuple(output_size))
    for feature, rows, scale in zip(features, level_rows, scales):
        if not torch.jit.is_tracing() and rows.numel() == 0:  # a graph keeps every level
            continue
        out[rows] = roi_align(feature, rois[rows], output_size, scale, sampling_ratio,
                              aligned).to(out.dtype)
    return out


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int],
              spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """``torchvision.ops.roi_align``, on the CPU as gathers with the sparse backward (above).

    Args:
        features: (N, C, H, W).
        rois: (R, 5) ``(batch_index, x1, y1, x2, y2)``.
    """
    needs_grad = torch.is_grad_enabled() and features.requires_grad
    if (features.device.type != "cpu" or torch.jit.is_tracing()
            or (needs_grad and sampling_ratio <= 0)):  # <= 0: adaptive, no sparse backward
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    if needs_grad:
        return _RoIAlignSparseBackward.apply(features, rois, output_size, spatial_scale,
                                             sampling_ratio, aligned)
    return roi_align_gather(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
