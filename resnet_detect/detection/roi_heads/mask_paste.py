"""Paste box-relative masks back into the image: (D, M, M) + (D, 4) boxes -> (D, H, W).

The Detectron convention, which torchvision's Mask R-CNN follows too (so imported weights
give the same masks): the M x M mask gets a zero border of ``padding`` pixels, the box is
widened around its centre by (M + 2 * padding) / M so that the border lands just outside
it, its corners are truncated to integers (x0, y0, x1, y1), and the padded mask is resized
bilinearly (half-pixel centres) onto the (x1 - x0 + 1) x (y1 - y0 + 1) pixels from
(x0, y0), clipped to the image. The resize is written as two small matrix products per box
(rows, then columns), so memory stays at one box region per mask.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


def _bilinear_weights(out_len: int, in_len: int, start: int, stop: int, like: Tensor) -> Tensor:
    """Interpolation matrix of a 1-D bilinear resize in_len -> out_len, rows start..stop-1.

    Output pixel t samples the input at ``(t + 0.5) * in_len / out_len - 0.5``, clamped to
    [0, in_len - 1] (``align_corners=False``).

    Returns:
        (stop - start, in_len) weights; each row sums to 1.
    """
    t = torch.arange(start, stop, dtype=like.dtype, device=like.device)
    src = ((t + 0.5) * (in_len / out_len) - 0.5).clamp(min=0.0, max=in_len - 1)
    low = src.floor().long()
    high = (low + 1).clamp(max=in_len - 1)
    frac = src - low.to(src.dtype)
    weights = torch.zeros((stop - start, in_len), dtype=like.dtype, device=like.device)
    weights.scatter_add_(1, low[:, None], (1.0 - frac)[:, None])
    weights.scatter_add_(1, high[:, None], frac[:, None])
    return weights


def _padded_masks_and_corners(masks: Tensor, boxes: Tensor, padding: int
                              ) -> tuple[Tensor, int, Tensor]:
    """(D, M+2p, M+2p) zero-bordered masks, their side M+2p, and (D, 4) int64 corners
    (x0, y0, x1, y1) of the boxes widened so the border lands just outside them."""
    side = masks.shape[-1]
    padded = F.pad(masks.float(), (padding,) * 4)  # (D, M, M) -> (D, M+2p, M+2p)
    in_len = side + 2 * padding
    boxes = boxes.float()
    centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * (in_len / side)
    # truncated toward zero; a box covers pixels x0..x1, y0..y1
    corners = torch.cat([centre - half, centre + half], dim=1).to(torch.int64)
    return padded, in_len, corners


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    *,
    threshold: float | None = 0.5,
    padding: int = 1,
) -> Tensor:
    """Pastes each box-relative mask into a full-size image mask.

    Args:
        masks: (D, M, M) probabilities (or 0/1 values), float.
        boxes: (D, 4) xyxy boxes in the pixels of the output image.
        image_size: (h, w) of the output image.
        threshold: a pixel is in the mask when its pasted probability is >= this; None
            returns the pasted probabilities instead.
        padding: zero border added around the masks before pasting (1 in the standard
            recipe: the mask then fades out at the box edge instead of being cut there).

    Returns:
        (D, h, w) bool masks (float probabilities when ``threshold`` is None).
    """
    regions = pasted_regions(masks, boxes, image_size, threshold=threshold, padding=padding)
    height, width = int(image_size[0]), int(image_size[1])
    dtype = torch.bool if threshold is not None else masks.dtype
    out = torch.zeros((len(masks), height, width), dtype=dtype, device=masks.device)
    for i, (top, left, region) in enumerate(regions):
        out[i, top:top + region.shape[0], left:left + region.shape[1]] = region
    return out


def pasted_regions(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], *,
                   threshold: float | None = 0.5, padding: int = 1
                   ) -> Iterator[tuple[int, int, Tensor]]:
    """Each mask of `paste_masks` (same arguments) as it is taken, as the part of it that
    can have pixels: ``(top, left, region)``, the (h_i, w_i) region (bool; probabilities when
    ``threshold`` is None) being the pasted mask's rows top..top+h_i-1 and columns
    left..left+w_i-1, its box clipped to the image ((0, 0) where none of the box is in it);
    the mask is empty elsewhere. One box region in memory, not a full-size mask: what an
    evaluation encoding each mask (`evaluation.pasted_mask_rles`) needs of a photo."""
    if masks.dim() != 3 or masks.shape[1] != masks.shape[2] or boxes.shape != (len(masks), 4):
        raise ValueError(
            f"paste_masks needs (D, M, M) masks and (D, 4) boxes, got {tuple(masks.shape)} "
            f"and {tuple(boxes.shape)}"
        )
    return _regions(masks, boxes, image_size, threshold, padding)


def _regions(masks: Tensor, boxes: Tensor, image_size: tuple[int, int],
             threshold: float | None, padding: int) -> Iterator[tuple[int, int, Tensor]]:
    """`pasted_regions` of checked arguments, computed as they are taken."""
    if len(masks) == 0:
        return
    height, width = int(image_size[0]), int(image_size[1])
    padded, in_len, corners = _padded_masks_and_corners(masks, boxes, padding)
    for i, (x0, y0, x1, y1) in enumerate(corners.tolist()):
        box_w, box_h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        left, right = max(x0, 0), min(x0 + box_w, width)
        top, bottom = max(y0, 0), min(y0 + box_h, height)
        if right <= left or bottom <= top:
            dtype = torch.bool if threshold is not None else masks.dtype
            yield 0, 0, torch.zeros((0, 0), dtype=dtype, device=masks.device)
            continue
        rows = _bilinear_weights(box_h, in_len, top - y0, bottom - y0, padded)  # (h_i, M+2p)
        cols = _bilinear_weights(box_w, in_len, left - x0, right - x0, padded)  # (w_i, M+2p)
        region = rows @ padded[i] @ cols.T  # (h_i, w_i)
        yield top, left, region >= threshold if threshold is not None else region


def _dense_weights(start: Tensor, length: Tensor, out_len: int | Tensor, in_len: int) -> Tensor:
    """(D, out_len, in_len) interpolation matrices of D 1-D resizes in_len -> length[d] placed
    at start[d]; rows outside a box (or the image) are zero."""
    t = torch.arange(out_len, device=start.device).to(torch.float32)[None, :] - start[:, None]
    inside = (t >= 0) & (t < length[:, None])
    src = ((t + 0.5) * (in_len / length[:, None]) - 0.5).clamp(min=0.0, max=in_len - 1)
    low = src.floor()
    high = (low + 1).clamp(max=in_len - 1)
    frac = src - low
    taps = torch.arange(in_len, device=start.device).to(torch.float32)
    weights = ((low[..., None] == taps) * (1.0 - frac)[..., None]
               + (high[..., None] == taps) * frac[..., None])
    return weights * inside[..., None]


def paste_masks_dense(masks: Tensor, boxes: Tensor, image_size: tuple[int | Tensor, int | Tensor],
                      *, threshold: float = 0.5, padding: int = 1) -> Tensor:
    """`paste_masks` for all D masks at once, with no Python loop or int: what an exported
    graph computes (it needs D x h x w floats at once).

    Returns:
        (D, h, w) bool masks.
    """
    padded, in_len, corners = _padded_masks_and_corners(masks, boxes, padding)
    x0, y0, x1, y1 = corners.to(torch.float32).unbind(dim=1)
    box_w = torch.clamp(x1 - x0 + 1, min=1.0)
    box_h = torch.clamp(y1 - y0 + 1, min=1.0)
    rows = _dense_weights(y0, box_h, image_size[0], in_len)  # (D, h, M+2p)
    cols = _dense_weights(x0, box_w, image_size[1], in_len)  # (D, w, M+2p)
    return (rows @ padded @ cols.transpose(1, 2)) >= threshold
