"""Images into one batch for the dense models built on the backbones (detection, segmentation).

`batch_images` normalises N RGB images (3, H_i, W_i), zero-pads them at the bottom and right
to a common size (rounded up to `size_divisibility`) and stacks them. On CPU the batch is
returned in channels_last memory format: oneDNN convolutions then run on NHWC maps without a
reorder at every layer (faster; measured in BENCHMARKS.md with benchmarks/detection_speed.py
and benchmarks/segmentation_inference.py).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)
_looked_at_float_images = False


def pad_to_multiple(x: Tensor, divisibility: int) -> Tensor:
    """Zero-pad (..., H, W) at the bottom and right to multiples of `divisibility` (0 or 1:
    as it is). H and W may be 0-dim tensors (an ONNX trace): the padding stays symbolic."""
    if divisibility <= 1:
        return x
    height, width = x.shape[-2:]
    return F.pad(x, (0, (divisibility - width % divisibility) % divisibility,
                     0, (divisibility - height % divisibility) % divisibility))


def batch_images(images: Sequence[Tensor] | Tensor, pixel_mean: Tensor, pixel_std: Tensor,
                 size_divisibility: int, *, owner: str) -> tuple[Tensor, list[tuple[int, int]]]:
    """Normalise and pad images into one batch.

    Args:
        images: N tensors (3, H_i, W_i) or one (N, 3, H, W) tensor, uint8 or float, RGB 0..255.
        pixel_mean: (3, 1, 1) mean, on the device the batch goes to.
        pixel_std: (3, 1, 1) std.
        size_divisibility: pad H and W to a multiple of this (0 or 1: no rounding).
        owner: the model's name, for error messages.

    Returns:
        (N, 3, H, W) float batch, zero-padded at the bottom and right (zero is the mean colour
        after normalisation), and the (h, w) of each image.

    Raises:
        ValueError: no images, or one that is not a (3, H, W) tensor.
    """
    if isinstance(images, Tensor) and images.dim() == 3:
        raise ValueError(f"{owner} takes a list of (3, H, W) images or an (N, 3, H, W) batch, "
                         f"got one {tuple(images.shape)} tensor: pass [image]")
    if len(images) == 0:
        raise ValueError(f"{owner} got no images")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"image {i} must be a (3, H, W) RGB tensor, got {shape}")
    _warn_of_unit_range(images, owner)
    image_sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    max_h = max(h for h, _ in image_sizes)
    max_w = max(w for _, w in image_sizes)
    if size_divisibility > 1:
        max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
        max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
    batch = []
    for image in images:
        x = (image.to(pixel_mean.device, torch.float32) - pixel_mean) / pixel_std
        batch.append(F.pad(x, (0, max_w - x.shape[2], 0, max_h - x.shape[1])))
    batch = torch.stack(batch)
    if batch.device.type == "cpu":
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch, image_sizes


def _warn_of_unit_range(images: Sequence[Tensor] | Tensor, owner: str) -> None:
    """Float images within 0..1 (torchvision's models take those), which this model
    normalises as 0..255 values: warned of, looked for in the first float batch that is not
    all black only (one wait for a GPU). uint8 images, as the loaders give, are not looked at."""
    global _looked_at_float_images
    floats = [image for image in images if image.is_floating_point()]
    if _looked_at_float_images or not floats:
        return
    peak = float(torch.stack([image.amax() for image in floats]).amax())
    _looked_at_float_images = peak > 0  # (a black warm-up image says nothing of the range)
    if 0 < peak <= 1:
        logger.warning("%s got float images within 0..1; it takes RGB values in 0..255 "
                       "(torchvision's models take 0..1): multiply them by 255", owner)
