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
            raise ValueError(
                f"box coder weights need 4 values (wx, wy, ww, wh), got {list(weights)}"
            )
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
        ref_boxes = ref_boxes.to(gt_boxes.dtype)
        ref_w = ref_boxes[:, 2] - ref_boxes[:, 0]
        ref_h = ref_boxes[:, 3] - ref_boxes[:, 1]
        ref_cx = ref_boxes[:, 0] + 0.5 * ref_w
        ref_cy = ref_boxes[:, 1] + 0.5 * ref_h

        gt_w = gt_boxes[:, 2] - gt_boxes[:, 0]
        gt_h = gt_boxes[:, 3] - gt_boxes[:, 1]
        gt_cx = gt_boxes[:, 0] + 0.5 * gt_w
        gt_cy = gt_boxes[:, 1] + 0.5 * gt_h

        dx = wx * (gt_cx - ref_cx) / ref_w
        dy = wy * (gt_cy - ref_cy) / ref_h
        dw = ww * torch.log(gt_w / ref_w)
        dh = wh * torch.log(gt_h / ref_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

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
        ref_boxes = ref_boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = ref_boxes[:, 2] - ref_boxes[:, 0]
        heights = ref_boxes[:, 3] - ref_boxes[:, 1]
        ctr_x = ref_boxes[:, 0] + 0.5 * widths
        ctr_y = ref_boxes[:, 1] + 0.5 * heights

        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        # (R, k) x 4 -> (R, k, 4) -> (R, k*4)
        pred = torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h),
            dim=2,
        )
        return pred.flatten(1)
