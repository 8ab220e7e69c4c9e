"""Image decoding with OpenCV, one policy for every task: H x W x 3 uint8 RGB out, or
`UnreadableImageError` naming the file (datasets skip such images and the runner counts them).

`cv2.IMREAD_COLOR` applies the EXIF orientation tag (unlike IMREAD_UNCHANGED), expands
grayscale to three channels, drops alpha and converts 16-bit to 8-bit.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# One OpenCV thread per process, set once here at import (never again in loader workers:
# reconfiguring the thread pool inherited through fork deadlocks). OpenCV's pool does not
# survive the fork of a loader worker either; the workers are the parallelism.
cv2.setNumThreads(1)


# the file suffixes taken for images where a folder is searched (any case)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class UnreadableImageError(OSError):
    """The file is missing, truncated or not an image OpenCV can decode."""


def is_truncated_jpeg(data: bytes) -> bool:
    """A JPEG whose last scan has no end-of-image marker after it: the file was cut short.
    (libjpeg decodes the missing part as grey and only prints a warning naming no file.)
    Inside a scan 0xFF is always followed by 0x00 or a restart marker, so the markers found
    are real; data appended after the image's end (a second image, a maker's trailer) keeps
    its own order of scan and end markers."""
    return data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array, honouring EXIF orientation.

    Raises:
        UnreadableImageError: the file is missing, truncated or cannot be decoded.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        reason = "file not found" if not Path(path).exists() else f"cannot be read ({err})"
        raise UnreadableImageError(f"{path}: {reason}") from None
    if is_truncated_jpeg(data):
        raise UnreadableImageError(f"{path}: truncated JPEG (no end marker after its last scan)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise UnreadableImageError(f"{path}: cannot be decoded")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of an image as `read_image` returns it (after the EXIF orientation),
    from its header alone; None when the header cannot be read."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
                width, height = height, width
    except (OSError, ValueError, SyntaxError):
        return None
    return height, width


def check_rgb_image(image: object) -> np.ndarray:
    """`image` if it is a non-empty (H, W, 3) uint8 RGB array, as the Predictors take."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
            or image.dtype != np.uint8 or image.size == 0:
        desc = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                else type(image).__name__)
        raise ValueError(f"Predictor expects a non-empty (H, W, 3) uint8 RGB array, got {desc}")
    return image
