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

# One OpenCV thread per process, set once here at import (never again in loader workers:
# reconfiguring the thread pool inherited through fork deadlocks). OpenCV's pool does not
# survive the fork of a loader worker either; the workers are the parallelism.
cv2.setNumThreads(1)


class UnreadableImageError(OSError):
    """The file is missing, truncated or not an image OpenCV can decode."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array, honouring EXIF orientation.

    Raises:
        UnreadableImageError: the file cannot be read or decoded.
    """
    try:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        reason = "file not found" if not Path(path).is_file() else "cannot be decoded"
        raise UnreadableImageError(f"{path}: {reason}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
