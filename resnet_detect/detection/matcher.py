"""Matching of R predictions (anchors, proposals) to M ground-truth boxes by IoU.

Input is an (M, R) quality matrix; output gives, for each of the R predictions, the
index of its best gt box and a label: 1 foreground, 0 background, -1 ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from resnet_detect.engine.config import ArgumentError

FOREGROUND = 1
BACKGROUND = 0
IGNORE = -1


class Matcher:
    """Assigns each prediction to the gt box it overlaps most.

    A prediction whose best IoU is ``>= high`` is foreground, ``< low`` background, and
    in between ignored. With ``allow_low_quality_matches`` each gt box also claims the
    predictions that overlap it most (ties included), whatever their IoU, so that no
    gt box is left without a positive; such a prediction keeps its own best gt box.

    Args:
        low_threshold: IoU below which a prediction is background.
        high_threshold: IoU from which a prediction is foreground.
        allow_low_quality_matches: add the best prediction(s) of every gt box as foreground.
    """

    def __init__(
        self, *, low_threshold: float, high_threshold: float, allow_low_quality_matches: bool
    ) -> None:
        if not 0.0 <= low_threshold <= high_threshold <= 1.0:
            raise ArgumentError(
                "matcher thresholds need 0 <= low <= high <= 1, got "
                f"low={low_threshold}, high={high_threshold}"
            )
        self.low_threshold = float(low_threshold)
        self.high_threshold = float(high_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, quality: Tensor) -> tuple[Tensor, Tensor]:
        """Matches predictions to gt boxes.

        Args:
            quality: (M, R) IoU between M gt boxes and R predictions.

        Returns:
            matched_idxs: (R,) int64 index of the best gt box (0 where M == 0).
            match_labels: (R,) int8 with 1 foreground, 0 background, -1 ignore.
        """
        num_gt, num_pred = quality.shape
        if num_gt == 0:
            zeros = torch.zeros(num_pred, dtype=torch.int64, device=quality.device)
            return zeros, torch.full_like(zeros, BACKGROUND, dtype=torch.int8)
        if num_pred == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=quality.device)
            return empty, empty.to(torch.int8)

        matched_vals, matched_idxs = quality.max(dim=0)
        return matched_idxs, self._labels(matched_vals, self._best_of_some_gt(quality))

    def match_boxes(self, gt_boxes: Tensor, boxes: Tensor, *, max_elements: int = 2**24
                    ) -> tuple[Tensor, Tensor]:
        """`self(box_iou(gt_boxes, boxes))`, the same bit for bit, computed over blocks of gt
        rows of at most `max_elements` IoUs: a dense image's (M, R) matrix over every anchor
        and its temporaries took gigabytes (1000 boxes, R50-FPN at 800x1333: 9 GB)."""
        rows = max(1, max_elements // max(len(boxes), 1))
        if len(gt_boxes) <= rows or len(boxes) == 0:
            return self(box_iou(gt_boxes, boxes))
        quality = box_iou(gt_boxes[:rows], boxes)
        matched_vals, matched_idxs = quality.max(dim=0)
        is_best = self._best_of_some_gt(quality)
        for start in range(rows, len(gt_boxes), rows):
            quality = box_iou(gt_boxes[start:start + rows], boxes)
            vals, idxs = quality.max(dim=0)
            later = vals > matched_vals  # ties keep the first gt box, as max() does
            matched_vals = torch.where(later, vals, matched_vals)
            matched_idxs = torch.where(later, idxs + start, matched_idxs)
            if is_best is not None:
                is_best = is_best | self._best_of_some_gt(quality)
        return matched_idxs, self._labels(matched_vals, is_best)

    def _best_of_some_gt(self, quality: Tensor) -> Tensor | None:
        """(R,) whether a prediction is among some gt row's best (ties too), for the low-quality
        matches; None without them."""
        if not self.allow_low_quality_matches:
            return None
        return (quality == quality.max(dim=1).values[:, None]).any(dim=0)

    def _labels(self, matched_vals: Tensor, is_best: Tensor | None) -> Tensor:
        # torch.where, not masked assignment or nonzero: no wait for the GPU (host sync)
        match_labels = torch.full(matched_vals.shape, FOREGROUND, dtype=torch.int8,
                                  device=matched_vals.device)
        match_labels = torch.where(matched_vals < self.high_threshold, IGNORE, match_labels)
        match_labels = torch.where(matched_vals < self.low_threshold, BACKGROUND, match_labels)
        if is_best is not None:  # each gt's best predictions (ties too) foreground
            match_labels = torch.where(is_best, FOREGROUND, match_labels)
        return match_labels
