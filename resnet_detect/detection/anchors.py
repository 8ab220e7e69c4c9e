"""Anchor boxes over feature maps: L levels, A anchors per location, (H*W*A, 4) per level.

Anchors are xyxy boxes in padded-image pixels. Per level, a set of A "cell" anchors
centred on (0, 0) (one per size x aspect ratio, corners rounded to integers) is shifted
to every feature-map location ``(x * stride, y * stride) + offset * stride``. Order
within a level is location-major (row by row), then cell anchor — the order in which
the RPN head's (N, A*C, H, W) outputs are flattened.

As in torchvision, a level's stride is ``padded image size // feature-map size`` for
each axis. For a P6 map made by a stride-2 max-pool of an odd-sized P5 that is not a
power of two (e.g. 800 // 13 = 61 rather than 64); keeping the rule makes imported
torchvision weights see the very same anchors.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from resnet_detect.engine.config import ArgumentError

# padded batch sizes whose anchors are kept (a test size, the training scales' sizes)
RECENT_SIZES = 8


def make_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Zero-centred anchors for every (aspect ratio, size) pair, ratio-major.

    Args:
        sizes: anchor side lengths sqrt(w * h) in pixels.
        aspect_ratios: height / width ratios.

    Returns:
        (len(aspect_ratios) * len(sizes), 4) xyxy anchors with corners rounded to integers.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def _levels(values: Sequence[Sequence[float]], name: str, example: str) -> list[list[float]]:
    """`values` as lists, one per feature level, refused where they are not lists of numbers
    (a flat list, a null or a name in one)."""
    if not isinstance(values, Sequence) or not all(
            hasattr(level, "__len__") and not isinstance(level, (str, bytes))
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in level)
            for level in values):
        raise ArgumentError(f"anchor {name} must be a list of lists of numbers, one list per "
                            f"feature level (or one for all), e.g. {example}; got "
                            f"{_plain(values)}")
    return [list(level) for level in values]


def _plain(values: object) -> object:
    """A config's lists as Python lists, to name them in a message."""
    if isinstance(values, Sequence) and not isinstance(values, str):
        return [_plain(v) for v in values]
    return values


class AnchorGenerator(nn.Module):
    """Generates anchors for L feature maps.

    Args:
        sizes: per level, the anchor sizes (pixels); a single list is used for every level.
        aspect_ratios: per level, the height/width ratios; a single list is used for every level.
        offset: anchor centre offset in units of the stride (0.0 puts the first centre at
            pixel (0, 0) like torchvision and detectron2; 0.5 at the middle of the cell).
    """

    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = _levels(sizes, "sizes", "[[32], [64], [128], [256], [512]]")
        aspect_ratios = _levels(aspect_ratios, "aspect_ratios", "[[0.5, 1.0, 2.0]]")
        if len(aspect_ratios) == 1 and len(sizes) > 1:
            aspect_ratios = aspect_ratios * len(sizes)
        if len(sizes) == 1 and len(aspect_ratios) > 1:
            sizes = sizes * len(aspect_ratios)
        if len(sizes) != len(aspect_ratios):
            raise ArgumentError(
                f"anchor sizes ({len(sizes)} levels) and aspect_ratios ({len(aspect_ratios)} "
                "levels) must have the same number of levels, or one of them a single level"
            )
        for level_sizes, level_ratios in zip(sizes, aspect_ratios):
            if (
                not level_sizes
                or not level_ratios
                or min(level_sizes) <= 0
                or min(level_ratios) <= 0
            ):
                raise ArgumentError(
                    f"anchor sizes and aspect ratios must be positive and non-empty, "
                    f"got sizes={sizes}, aspect_ratios={aspect_ratios}"
                )
        if not 0.0 <= offset < 1.0:
            raise ArgumentError(f"anchor offset must be in [0, 1), got {offset}")
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.offset = float(offset)
        # buffers (not saved): they move with the model, so no per-call host-to-device copy,
        # which on a GPU waits for the stream
        for level, (s, a) in enumerate(zip(sizes, aspect_ratios)):
            self.register_buffer(f"cell_anchors_{level}", make_cell_anchors(s, a),
                                 persistent=False)
        self._num_levels = len(sizes)
        self._recent: OrderedDict[tuple, list[Tensor]] = OrderedDict()  # see forward

    @property
    def cell_anchors(self) -> list[Tensor]:
        """Per level, the (A, 4) zero-centred anchors."""
        return [getattr(self, f"cell_anchors_{level}") for level in range(self._num_levels)]

    @property
    def num_levels(self) -> int:
        """Number of feature levels the generator expects."""
        return len(self.cell_anchors)

    @property
    def num_anchors_per_location(self) -> list[int]:
        """A for each level."""
        return [len(c) for c in self.cell_anchors]

    def forward(self, features: Sequence[Tensor], padded_size: tuple[int, int]) -> list[Tensor]:
        """Anchors of every level; the same for all images of the batch.

        Args:
            features: L maps (N, C, H_l, W_l); only their sizes and device are used.
            padded_size: (H, W) of the padded batch tensor the maps were computed from.

        Returns:
            L float32 tensors (H_l * W_l * A_l, 4) of xyxy anchors, kept for the next call at
            the same sizes: not to be modified in place.
        """
        if len(features) != self.num_levels:
            raise ValueError(
                f"anchor generator has {self.num_levels} levels, got {len(features)} feature maps"
            )
        device = features[0].device
        grids = tuple((*f.shape[-2:], padded_size[0] // f.shape[-2], padded_size[1] // f.shape[-1])
                      for f in features)
        if torch.jit.is_tracing() or torch.compiler.is_compiling():  # the graph computes them
            return self._anchors(grids, device)
        key = (device, torch.is_inference_mode_enabled(), grids)
        anchors = self._recent.get(key)
        if anchors is not None:  # the same sizes again: the anchors of last time (read only)
            self._recent[key] = self._recent.pop(key, anchors)  # most recent last
            return list(anchors)
        anchors = self._anchors(grids, device)
        self._recent[key] = anchors
        if len(self._recent) > RECENT_SIZES:
            self._recent.popitem(last=False)
        return list(anchors)

    def _anchors(self, grids: Sequence[tuple[int, int, int, int]],
                 device: torch.device) -> list[Tensor]:
        anchors = []
        for (grid_h, grid_w, stride_h, stride_w), cell in zip(grids, self.cell_anchors):
            shift_x = (
                torch.arange(grid_w, device=device, dtype=torch.float32) + self.offset
            ) * stride_w
            shift_y = (
                torch.arange(grid_h, device=device, dtype=torch.float32) + self.offset
            ) * stride_h
            shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4)
            # float32 whatever the feature dtype (AMP): exact pixel coordinates
            cell = cell.to(device, torch.float32)
            anchors.append((shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4))
        return anchors
