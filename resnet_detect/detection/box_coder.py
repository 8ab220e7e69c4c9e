"""Box <-> delta transform of R-CNN: (R, 4) reference boxes and (R, k*4) deltas.

Deltas are ``(dx, dy, dw, dh)`` scaled by per-coordinate weights: (1, 1, 1, 1) for
the RPN, (10, 10, 5, 5) for the Fast R-CNN box head. The arithmetic follows
torchvision's ``BoxCoder`` operation by operation (box width without the old "+1",
centre = x1 + w / 2), so imported torchvision weights decode to the same boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from resnet_detect.engine.config import ArgumentError

# Largest dw/dh applied when decoding: exp(log(1000/16)) keeps a box at most
# 62.5x its reference size and avoids exp() overflow early in training.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes gt boxes relative to reference boxes and decodes deltas back.

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers of the deltas.
        scale_clamp: upper bound applied to ``dw``/``dh`` before ``exp`` when decoding.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ) -> None:
        if len(weights) != 4:
            raise ArgumentError(
                f"box coder weights need 4 values (wx, wy, ww, wh), got {list(weights)}"
            )
        if not all(isinstance(w, (int, float)) and 0 < w < math.inf for w in weights):
            raise ArgumentError(f"box coder weights (bbox_reg_weights) must be positive numbers "
                                f"(decoding divides the deltas by them), got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, ref_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """Deltas that turn ``ref_boxes`` into ``gt_boxes``.

        Args:
            ref_boxes: (R, 4) xyxy anchors or proposals (positive width and height).
            gt_boxes: (R, 4) xyxy target boxes paired row by row with ``ref_boxes``.

        Returns:
            (R, 4) deltas ``(dx, dy, dw, dh)``.
        """
        wx, wy, ww, wh = self.weights
        ref_sizes, ref_centers = _sizes_and_centers(ref_boxes.to(gt_boxes.dtype))
        gt_sizes, gt_centers = _sizes_and_centers(gt_boxes)
        d_centers = _times(gt_centers - ref_centers, wx, wy) / ref_sizes
        d_sizes = _times(torch.log(gt_sizes / ref_sizes), ww, wh)
        return torch.cat((d_centers, d_sizes), dim=1)

    def decode(self, deltas: Tensor, ref_boxes: Tensor) -> Tensor:
        """Applies deltas to reference boxes.

        Args:
            deltas: (R, k*4) deltas, k boxes per reference (e.g. one per class).
            ref_boxes: (R, 4) xyxy reference boxes.

        Returns:
            (R, k*4) decoded xyxy boxes, in the dtype of ``deltas``.
        """
        if deltas.dim() != 2 or deltas.shape[1] % 4 != 0:
            raise ValueError(f"deltas must have shape (R, k*4), got {tuple(deltas.shape)}")
        wx, wy, ww, wh = self.weights
        sizes, centers = _sizes_and_centers(ref_boxes.to(deltas.dtype))
        sizes, centers = sizes[:, None], centers[:, None]  # against (R, k, 2)
        # k as a Python int: an exported graph then reshapes an empty (0, k*4) as well (ONNX
        # Runtime folds a computed k into -1, which zero rows leave undefined)
        deltas = deltas.view(deltas.shape[0], int(deltas.shape[1]) // 4, 4)
        d_centers = _over(deltas[..., :2], wx, wy)
        d_sizes = torch.clamp(_over(deltas[..., 2:], ww, wh), max=self.scale_clamp)
        pred_centers = d_centers * sizes + centers
        half_sizes = 0.5 * (torch.exp(d_sizes) * sizes)
        return torch.cat((pred_centers - half_sizes, pred_centers + half_sizes), dim=2).flatten(1)


# x and y go together, (..., 2) at a time: half the kernels of one coordinate at a time (what
# bounds a GPU at small batches); the same arithmetic, element by element, as torchvision's.

def _sizes_and_centers(boxes: Tensor) -> tuple[Tensor, Tensor]:
    sizes = boxes[:, 2:] - boxes[:, :2]
    return sizes, boxes[:, :2] + 0.5 * sizes


def _times(pairs: Tensor, a: float, b: float) -> Tensor:
    """(a * x, b * y) of (..., 2) pairs."""
    if a == b:
        return a * pairs
    return torch.stack((a * pairs[..., 0], b * pairs[..., 1]), dim=-1)


def _over(pairs: Tensor, a: float, b: float) -> Tensor:
    """(x / a, y / b) of (..., 2) pairs."""
    if a == b:
        return pairs / a
    return torch.stack((pairs[..., 0] / a, pairs[..., 1] / b), dim=-1)
