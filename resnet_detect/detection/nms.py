"""The best k boxes of a per-class NMS, without running the NMS over every candidate.

At a low score threshold (LVIS's 0.0001, or 0.001 for the last AP point on COCO) the box head
leaves up to R x K candidates: a million with 1000 RoIs and LVIS's 1203 classes, whose NMS
took seconds per image on a CPU. Only the first k survivors are kept, and NMS keeps a box
unless a higher-scoring box of its class overlaps it, so the survivors among the n best
candidates are exactly the survivors of the whole NMS that lie among them. Once k of them
survive, no lower-scoring candidate can enter the first k.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms
from torchvision.ops import boxes as box_ops

# the first prefix is this many times k candidates, and grows by this factor while fewer
# than k of it survive
PREFIX_GROWTH = 4


def _per_class(boxes: Tensor) -> bool:
    """Whether torchvision's batched_nms takes its per-class loop for these boxes (above
    4000 coordinates on a CPU, 100k on a GPU, in torchvision 0.26 to 0.29), not one NMS of
    the boxes offset by class, whose float rounding can tip an IoU at the threshold: a
    prefix goes the way the whole call would."""
    return boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000)


def _tracing() -> bool:
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def batched_nms_top(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                    k: int) -> Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)[:k]``: indices of
    the kept boxes by decreasing score (the order of two kept boxes of equal score is as
    arbitrary as there).

    The NMS runs on the candidates scoring above the n-th best score, n = 4k, 16k, ...,
    until k survive or n covers them all. A prefix ends strictly above a score, so boxes of
    equal score are in it together. While tracing (ONNX export, torch.compile) it is
    torchvision's call itself.
    """
    count = scores.shape[0]
    prefix = PREFIX_GROWTH * k
    if _tracing() or k <= 0 or count <= prefix:
        return batched_nms(boxes, scores, idxs, iou_threshold)[:k]
    nms = (box_ops._batched_nms_vanilla if _per_class(boxes)
           else box_ops._batched_nms_coordinate_trick)
    while prefix < count:
        best_scores, best = scores.topk(prefix, sorted=False)
        # in index order: of two equal scores NMS keeps the first, as over every candidate
        best = best[best_scores > best_scores.min()].sort().values
        keep = nms(boxes[best], scores[best], idxs[best], iou_threshold)
        if keep.shape[0] >= k:
            return best[keep[:k]]
        prefix *= PREFIX_GROWTH
    return batched_nms(boxes, scores, idxs, iou_threshold)[:k]
