"""Test-time inference: multi-scale + flip averaging, sliding windows, evaluation over a loader.

Shapes: K classes; an image is (3, H, W) RGB 0..255; predictions are (K, H, W) class
probabilities (softmax of the logits) at the image's size, averaged over the scales and
flips asked for. With one scale of 1.0, no flip, no window and no size cap it is the plain
forward pass.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from resnet_detect.engine.config import ConfigError, is_number
from resnet_detect.engine.data import CountedLoader
from resnet_detect.engine.trainer import eval_mode

from .evaluation import SemSegEvaluator
from .model import SemanticSegmentor

logger = logging.getLogger(__name__)
MAX_TEST_SCALE = 8  # a test scale beyond: a size in pixels taken for a ratio


def capped_size(height: int, width: int, max_size: int | None) -> tuple[int, int]:
    """(height, width) scaled so that the longer side is `max_size` when it is longer, each
    side rounded half up in integers (an exported graph computes the same); else unchanged."""
    longer = max(height, width)
    if max_size is None or longer <= max_size:
        return height, width
    return (max((2 * height * max_size + longer) // (2 * longer), 1),
            max((2 * width * max_size + longer) // (2 * longer), 1))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering 0..length, the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


class TTAInference:
    """Averages softmax probabilities over rescaled, flipped and windowed passes.

    Args:
        scales: image rescale factors (e.g. (0.75, 1.0, 1.25)).
        flip: also run each scale on the horizontally flipped image.
        window: (h, w) of sliding windows on each rescaled image; None runs the whole
            image at once. Overlapping window logits are averaged.
        stride: (h, w) step of the windows; default two thirds of the window.
        windows_per_batch: windows run through the model together.
        max_size: longer side an image is first scaled down to when it is longer, keeping
            its aspect ratio (`capped_size`; the scales apply after it); None keeps every
            image at its size. Probabilities still come back at the image's size.
    """

    def __init__(self, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                 window: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                 windows_per_batch: int = 4, max_size: int | None = None) -> None:
        if not scales or not all(math.isfinite(s) and s > 0 for s in scales):  # (NaN > 0: False)
            raise ValueError(f"scales must be positive, got {list(scales)}")
        for what, sizes in (("window", window), ("stride", stride)):
            if sizes and (isinstance(sizes, str) or any(
                    isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in sizes)):
                raise ValueError(f"{what} must be two whole numbers of pixels, [height, "
                                 f"width], got {sizes!r}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int)
                                     or max_size < 1):
            raise ValueError(f"max_size must be a positive number of pixels or null, got "
                             f"{max_size!r}")
        self.max_size = max_size
        self.scales = tuple(float(s) for s in scales)
        self.flip = flip
        self.window = tuple(int(v) for v in window) if window else None
        if stride and self.window is None:  # it would be ignored: one pass over the whole image
            raise ValueError(f"a stride {stride} needs a window (test.window: [height, width] "
                             f"of the sliding windows)")
        given = stride
        if self.window is not None:
            stride = stride or tuple(max(2 * v // 3, 1) for v in self.window)
        self.stride = tuple(int(v) for v in stride) if stride else None
        if self.window is not None and (len(self.window) != 2 or len(self.stride) != 2
                                        or min(*self.window, *self.stride) < 1):
            raise ValueError(f"window and stride must be two positive sizes, got {window}"
                             + (f" and {given}" if given else ""))
        if self.window is not None and any(s > w for s, w in zip(self.stride, self.window)):
            # the pixels between two windows would be predicted by none
            raise ValueError(f"a stride longer than the window leaves pixels out: window "
                             f"{list(self.window)}, stride {list(self.stride)}")
        self.windows_per_batch = windows_per_batch

    @property
    def single_scale(self) -> float | None:
        """The scale when this is one rescaled pass (no flip or window; perhaps capped by
        max_size), else None."""
        if len(self.scales) != 1 or self.flip or self.window is not None:
            return None
        return self.scales[0]

    @property
    def is_plain(self) -> bool:
        """True when this is a single forward pass (no rescale, flip, window or cap)."""
        return (self.scales == (1.0,) and not self.flip and self.window is None
                and self.max_size is None)

    def _logits(self, model: SemanticSegmentor, image: Tensor) -> Tensor:
        """(K, h, w) logits of one (3, h, w) image, whole or by sliding windows."""
        if self.window is None:
            return model([image])[0]["sem_seg"]
        (h, w), (wh, ww), (sh, sw) = image.shape[-2:], self.window, self.stride
        boxes = [(y, x) for y in window_starts(h, wh, sh) for x in window_starts(w, ww, sw)]
        total = count = None
        for i in range(0, len(boxes), self.windows_per_batch):
            chunk = boxes[i:i + self.windows_per_batch]
            crops = [image[:, y:y + wh, x:x + ww] for y, x in chunk]
            for (y, x), out in zip(chunk, model(crops)):
                logits = out["sem_seg"]
                if total is None:
                    total = logits.new_zeros((logits.shape[0], h, w))
                    count = logits.new_zeros((1, h, w))
                total[:, y:y + logits.shape[1], x:x + logits.shape[2]] += logits
                count[:, y:y + logits.shape[1], x:x + logits.shape[2]] += 1
        return total / count

    def _view_logits(self, model: SemanticSegmentor, image: Tensor) -> Iterator[Tensor]:
        """(K, h, w) logits of each rescaled (and flipped back) view, at the view's size."""
        height, width = image.shape[-2:]
        capped = capped_size(height, width, self.max_size)
        for scale in self.scales:
            scaled = image.float()
            # rounded half up, as mmseg's rescale (Python's round: half to even)
            size = (max(int(capped[0] * scale + 0.5), 1), max(int(capped[1] * scale + 0.5), 1))
            if size != (height, width):  # one resize: the cap's and the scale's together
                scaled = F.interpolate(scaled[None], size=size, mode="bilinear",
                                       align_corners=False)[0]
            yield self._logits(model, scaled)
            if self.flip:
                yield self._logits(model, scaled.flip(-1)).flip(-1)

    @torch.no_grad()
    def __call__(self, model: SemanticSegmentor, image: Tensor) -> Tensor:
        """(K, H, W) averaged class probabilities of a (3, H, W) RGB 0..255 image."""
        height, width = image.shape[-2:]
        probs = None
        for logits in self._view_logits(model, image):
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits[None], size=(height, width), mode="bilinear",
                                       align_corners=False)[0]
            p = logits.softmax(dim=0)
            probs = p if probs is None else probs + p
        return probs / (len(self.scales) * (2 if self.flip else 1))

    @torch.no_grad()
    def class_map(self, model: SemanticSegmentor, image: Tensor) -> Tensor:
        """(H, W) int64 class ids of a (3, H, W) RGB 0..255 image.

        Several views: the argmax of the averaged probabilities. One view (a scale, maybe
        capped by max_size, perhaps in windows): the argmax of its logits resized to the
        image's size, as torchvision's references and the ONNX export take it, one class at
        a time, so that no (K, H, W) map is made at the image's size (21 classes on a
        6000x6000 image: 3 GB for each such map)."""
        if self.flip or len(self.scales) > 1:
            return self(model, image).argmax(dim=0)
        (logits,) = self._view_logits(model, image)
        return resized_argmax(logits, tuple(image.shape[-2:]))


def resized_argmax(logits: Tensor, size: tuple[int | Tensor, int | Tensor]) -> Tensor:
    """``F.interpolate(logits[None], size, bilinear).argmax(1)[0]`` for (K, h, w) logits,
    class by class: memory for a few (H, W) maps, not K. The same classes, the first of
    equal maxima winning, up to rounding: on a CPU a channel resized alone can differ in the
    last bit from the same channel among 32 or more. Traceable (the ONNX graph unrolls the
    classes; `size` may be traced tensors)."""
    if not torch.jit.is_tracing() and tuple(logits.shape[-2:]) == tuple(size):
        return logits.argmax(dim=0)
    # (1, 1, H, W) maps, squeezed once at the end: an ONNX graph copies what it indexes
    best = F.interpolate(logits[None, :1], size=size, mode="bilinear", align_corners=False)
    classes = torch.zeros_like(best, dtype=torch.int64)
    for k in range(1, logits.shape[0]):
        resized = F.interpolate(logits[None, k:k + 1], size=size, mode="bilinear",
                                align_corners=False)
        classes.masked_fill_(resized > best, k)
        best = torch.maximum(best, resized)
    return classes.squeeze(1).squeeze(0)


def tta_from_config(cfg: Mapping[str, Any]) -> TTAInference:
    """`TTAInference` from the config's `test` section."""
    t = cfg["test"]
    for key in ("window", "stride"):
        if is_number(t[key]):  # (TTAInference's "'int' object is not iterable")
            raise ConfigError(f"test.{key} is [h, w], got {t[key]!r}" + (
                f": write test.{key}=[{t[key]},{t[key]}]" if isinstance(t[key], int) else ""))
    large = [s for s in t["scales"] or []
             if is_number(s) and math.isfinite(s) and s > MAX_TEST_SCALE]
    if large:  # (test.scales=[512, 1024] read as sizes: images grown 512 times, out of memory)
        raise ConfigError(f"test.scales are ratios of each image's size (mmsegmentation's "
                          f"img_ratios, e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]), up to "
                          f"{MAX_TEST_SCALE}; got {large[0]}: a size in pixels? test.max_size "
                          f"caps the longer side")
    try:
        return TTAInference(scales=list(t["scales"]), flip=t["flip"], window=t["window"],
                            stride=t["stride"], max_size=t["max_size"])
    except (TypeError, ValueError) as e:  # e.g. window: 512 for [512, 512]
        raise ConfigError(f"invalid test section: scales {t['scales']}, window {t['window']}, "
                          f"stride {t['stride']}, max_size {t['max_size']}: {e}") from None


@torch.no_grad()
def evaluate_model(model: SemanticSegmentor, loader: Iterable[list[dict[str, Any]]],
                   evaluator: SemSegEvaluator, *, tta: TTAInference | None = None,
                   output_dir: str | os.PathLike | None = None,
                   on_prediction: Callable[[dict[str, Any], torch.Tensor], None] | None = None,
                   ) -> dict[str, Any]:
    """Run `model` over `loader` (samples with "image" and "gt_sem_seg") and score it;
    `on_prediction(sample, class map)` sees every image's prediction (e.g. to save it).

    Must be called on every process when distributed (the evaluator gathers).

    Returns:
        What `evaluator.evaluate(output_dir)` returns.
    """
    evaluator.reset()
    device = model.pixel_mean.device
    with eval_mode(model):
        for batch in loader:
            if not batch:
                continue
            images = [s["image"].to(device) for s in batch]
            if tta is None or tta.is_plain:
                preds = [out["mask"] for out in model(images)]
            else:
                preds = [tta.class_map(model, image) for image in images]
            evaluator.process(preds, [s["gt_sem_seg"] for s in batch])
            if on_prediction is not None:
                for sample, pred in zip(batch, preds):
                    on_prediction(sample, pred)
    if isinstance(loader, CountedLoader):
        loader.raise_if_stopped()
    return evaluator.evaluate(output_dir)
