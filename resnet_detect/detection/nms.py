"""The best k boxes of a per-class NMS, without running the NMS over every candidate; and the
RPN's per-image NMS calls on several CUDA streams (a lever, off by default).

At a low score threshold (LVIS's 0.0001, or 0.001 for the last AP point on COCO) the box head
leaves up to R x K candidates: a million with 1000 RoIs and LVIS's 1203 classes, whose NMS
took seconds per image on a CPU. Only the first k survivors are kept, and NMS keeps a box
unless a higher-scoring box of its class overlaps it, so the survivors among the n best
candidates are exactly the survivors of the whole NMS that lie among them. Once k of them
survive, no lower-scoring candidate can enter the first k.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

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


def tracing() -> bool:
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
    if tracing() or k <= 0 or count <= prefix:
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


# torchvision's CUDA NMS ends in gather_keep_from_mask, a kernel of one thread block that walks
# the sorted boxes one after another, and then reads the number kept back to the host
# (masked_select): the GPU is nearly idle while it runs, and the host waits for each image's
# NMS before it launches the next (a profile on an H200, torch 2.11: 16 calls of ~2.2 ms, 35
# of 148 ms GPU-busy per bf16 Faster R-CNN training step at batch 16). The images are
# independent, so with `streams` > 1 each of that many side streams takes every streams-th
# image, fed by its own host thread: one image's read-back then holds up only its own
# stream's next image, and the kernels overlap. Streams alone, from one host thread, would
# not: that thread would still wait for every image in turn.


@functools.cache
def _side_streams(device: torch.device, count: int) -> tuple[torch.cuda.Stream, ...]:
    return tuple(torch.cuda.Stream(device) for _ in range(count))


@functools.cache
def _host_threads(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(count, thread_name_prefix="nms_stream")


def per_image_batched_nms(boxes: Sequence[Tensor], scores: Sequence[Tensor],
                          idxs: Sequence[Tensor], iou_threshold: float,
                          streams: int = 0) -> list[Tensor]:
    """``[batched_nms(b, s, i, iou_threshold) for b, s, i in zip(boxes, scores, idxs)]``, the
    same keep indices, with each image's NMS on one of `streams` CUDA side streams (see above)
    where `streams` > 1, the boxes are on a GPU and there are several images. Otherwise (a
    CPU, tracing, torch.compile) it is that loop itself. No host synchronisation is added: the
    caller's stream waits for the side streams on the GPU."""
    count = min(streams, len(boxes))
    if count <= 1 or boxes[0].device.type != "cuda" or tracing():
        return [batched_nms(b, s, i, iou_threshold) for b, s, i in zip(boxes, scores, idxs)]
    device = boxes[0].device
    current = torch.cuda.current_stream(device)
    side = _side_streams(device, streams)[:count]  # one pool per device and setting
    for stream in side:
        stream.wait_stream(current)  # the inputs are written on the caller's stream
    # autocast is set per thread: the workers take the caller's (and no autograd, for indices)
    amp = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")

    def run(j: int) -> list[Tensor]:  # images j, j + count, ... on side stream j
        stream, keeps = side[j], []
        with (torch.cuda.device(device), torch.cuda.stream(stream), torch.no_grad(),
              torch.autocast("cuda", enabled=amp[0], dtype=amp[1])):
            for i in range(j, len(boxes), count):
                for tensor in (boxes[i], scores[i], idxs[i]):
                    tensor.record_stream(stream)  # not reused before the side stream is done
                keep = batched_nms(boxes[i], scores[i], idxs[i], iou_threshold)
                keep.record_stream(current)  # made on the side stream, read on the caller's
                keeps.append(keep)
        return keeps

    per_stream = list(_host_threads(streams).map(run, range(count)))  # re-raises errors
    for stream in side:
        current.wait_stream(stream)
    return [per_stream[i % count][i // count] for i in range(len(boxes))]
