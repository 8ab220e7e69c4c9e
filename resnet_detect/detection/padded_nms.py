"""Greedy NMS of a padded batch of sorted boxes, as matrix products: one set of kernels for
every image instead of one NMS call per image (a lever for the RPN on a GPU, off by default).

Greedy NMS keeps box j (boxes sorted by decreasing score) unless a kept box i < j overlaps it
by more than the threshold. With S[i, j] = "i < j and IoU(i, j) > threshold", the kept set is
the one `keep` with keep[j] = not any_i (keep[i] and S[i, j]): box 0 is decided first, and
each later box by the boxes before it. Starting from every box kept, the update
keep <- not (keep @ S > 0) decides after step t every box whose chains of suppressors are
shorter than t, so it reaches that set and then stays there; a step that changes nothing
means it was reached. Each step is one batched matrix-vector product. Chains are short where
boxes crowd around objects (each suppressed by the best box there); a row whose chains outlast
MAX_CHECKS x STEPS_PER_CHECK steps (boxes in a line, each overlapping the next) is finished
by torchvision's NMS. The IoU is torchvision's (`inter / (area_i + area_j - inter) >
threshold`, float32, areas as (x2 - x1) * (y2 - y1)), so on the same coordinates the boxes
kept are the ones its NMS keeps. Against `batched_nms` over levels they can differ where an
IoU lies within float32 rounding of the threshold: it shifts each level's boxes by an offset
(thousands of pixels) whose rounding moves such IoUs, and its CUDA kernel may fuse a
multiply-add (about one pair in 2000 clustered boxes flips; rarely a box kept otherwise).

torchvision's CUDA NMS, by contrast, walks the sorted boxes one after another in a kernel of
one thread block and reads its count back, image after image: in a bf16 Faster R-CNN step at
batch 16 on an H200 (run 5 of the GPU suite) 16 calls of ~2.2 ms, a quarter of the step's GPU
time. Here the cost is K x K IoUs per image and level, and a few products of that size.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

# steps run between two reads of "changed?" (each read makes the host wait for the GPU once)
STEPS_PER_CHECK = 8
MAX_CHECKS = 4  # then the rows not settled yet go to torchvision's NMS
IOU_CHUNK = 1 << 26  # IoUs computed at once (the float32 temporaries' elements)


def suppression_matrix(boxes: Tensor, iou_threshold: float) -> Tensor:
    """(B, K, K) bool: S[b, i, j] = i < j and IoU(box i, box j) > `iou_threshold`, for (B, K,
    4) xyxy `boxes`, computed as torchvision's NMS kernels compute it."""
    boxes = boxes.float()
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    width = (torch.minimum(x2[:, :, None], x2[:, None, :])
             - torch.maximum(x1[:, :, None], x1[:, None, :])).clamp_(min=0)
    height = (torch.minimum(y2[:, :, None], y2[:, None, :])
              - torch.maximum(y1[:, :, None], y1[:, None, :])).clamp_(min=0)
    inter = width.mul_(height)
    del height
    union = (area[:, :, None] + area[:, None, :]).sub_(inter)
    overlaps = inter.div_(union) > iou_threshold
    del inter, union
    count = boxes.shape[1]
    later = torch.ones(count, count, dtype=torch.bool, device=boxes.device).triu_(1)
    return overlaps.logical_and_(later)


def padded_greedy_nms(boxes: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """(B, K) bool: which boxes greedy NMS keeps, per row.

    Args:
        boxes: (B, K, 4) xyxy, each row sorted by decreasing score.
        valid: (B, K) bool; a box not valid (padding, a box filtered out) is neither kept
            nor suppresses another.
        iou_threshold: boxes overlapping a kept one by more than this are dropped.
    """
    count = boxes.shape[1]
    if count == 0:
        return valid.clone()
    # counts of kept suppressors: > 0 is exact in float16 too (a sum of ones is never 0, and
    # an overflow is inf); autocast off, or it would cast the matrix again at every step
    dtype = torch.float16 if boxes.device.type == "cuda" else torch.float32
    rows = max(1, IOU_CHUNK // (count * count))  # float32 temporaries of IOU_CHUNK at most
    matrix = torch.empty(boxes.shape[0], count, count, dtype=dtype, device=boxes.device)
    for start in range(0, boxes.shape[0], rows):
        matrix[start:start + rows] = suppression_matrix(boxes[start:start + rows], iou_threshold)
    keep = valid  # (a box not kept suppresses nothing: invalid ones never are)
    with torch.autocast(boxes.device.type, enabled=False):
        for _ in range(MAX_CHECKS):
            for _ in range(STEPS_PER_CHECK):
                before = keep
                suppressed = torch.bmm(keep.to(dtype)[:, None, :], matrix)[:, 0] > 0
                keep = valid & ~suppressed
            if torch.equal(keep, before):
                return keep
    # rows with chains longer than the steps taken: torchvision's NMS, in the rows' order
    order = torch.arange(count, 0, -1, dtype=torch.float32, device=boxes.device)
    for row in (keep != before).any(dim=1).nonzero()[:, 0].tolist():
        boxes_of_row = valid[row].nonzero()[:, 0]
        keep[row] = False  # (keep is the last step's own tensor)
        kept = nms(boxes[row, boxes_of_row].float(), order[boxes_of_row], iou_threshold)
        keep[row, boxes_of_row[kept]] = True
    return keep
