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

# the first prefix is this many times k candidates, and grows by this factor while fewer
# than k of it survive
PREFIX_GROWTH = 4


def _tracing() -> bool:
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def batched_nms_top(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                    k: int) -> Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)[:k]``: indices of
    the kept boxes by decreasing score (which of two equal scores comes first is as
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
    while prefix < count:
        best_scores, best = scores.topk(prefix, sorted=False)
        best = best[best_scores > best_scores.min()]
        keep = batched_nms(boxes[best], scores[best], idxs[best], iou_threshold)
        if keep.shape[0] >= k:
            return best[keep[:k]]
        prefix *= PREFIX_GROWTH
    return batched_nms(boxes, scores, idxs, iou_threshold)[:k]
