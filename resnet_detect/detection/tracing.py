"""Size arithmetic that an ONNX export can trace (engine.export): while tracing, sizes read
from tensors are 0-dim tensors, and any Python int made of them would freeze the exported
graph at the example image's size. In eager mode these are the plain operations.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


def clamped_count(available: int | Tensor, limit: int) -> int | Tensor:
    """min(available, limit), e.g. a top-k that cannot ask for more than there is."""
    if isinstance(available, Tensor):
        return torch.clamp(available, max=limit)
    return min(available, limit)


def clip_to_image(boxes: Tensor, image_size: tuple[int | Tensor, int | Tensor]) -> Tensor:
    """(..., 4) xyxy boxes clipped to 0..w, 0..h."""
    height, width = image_size
    if not isinstance(height, Tensor) and not isinstance(width, Tensor):
        x = boxes[..., 0::2].clamp(min=0, max=width)
        y = boxes[..., 1::2].clamp(min=0, max=height)
    else:
        zero = boxes.new_zeros(())
        x = torch.min(torch.max(boxes[..., 0::2], zero), torch.as_tensor(width).to(boxes))
        y = torch.min(torch.max(boxes[..., 1::2], zero), torch.as_tensor(height).to(boxes))
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """(...,) bool: the (..., 4) xyxy boxes whose width and height are both at least
    `min_size` (torchvision's remove_small_boxes, as a mask)."""
    return ((boxes[..., 2] - boxes[..., 0] >= min_size)
            & (boxes[..., 3] - boxes[..., 1] >= min_size))


def split_per_image(values: Tensor, per_image: Sequence[Tensor]) -> list[Tensor]:
    """`values` of all images, image after image, split as the `per_image` tensors are long.

    One image keeps it whole, so that a traced graph does not freeze its length."""
    if len(per_image) == 1:
        return [values]
    return list(values.split([len(v) for v in per_image]))



def true_indices(masks: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """For each 1-D bool mask (or each row of an (N, K) one), the int64 indices of its true
    entries, increasing.

    Eager: one read of all the masks' counts (a `nonzero` per mask makes the host wait for
    the GPU once per mask). Traced: a `nonzero` per mask, which keeps the counts in the
    graph."""
    rows = masks.unbind(0) if isinstance(masks, Tensor) else list(masks)
    if torch.jit.is_tracing() or len(rows) == 1:  # one mask: one read back either way
        return [torch.nonzero(mask, as_tuple=True)[0] for mask in rows]
    if not rows:
        return []
    if isinstance(masks, Tensor):
        stacked = masks
    elif len({len(mask) for mask in rows}) == 1:
        stacked = torch.stack(rows)
    else:
        stacked = pad_sequence(rows, batch_first=True)  # (N, K_max), padded with False
    # a stable descending sort puts each row's true entries first, in their order
    order = torch.argsort(stacked.to(torch.uint8), dim=1, descending=True, stable=True)
    counts = stacked.sum(dim=1).tolist()
    return [order[i, :count] for i, count in enumerate(counts)]
