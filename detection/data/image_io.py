"""Image decoding with OpenCV: H x W x 3 uint8 RGB out, whatever the file holds.

`cv2.IMREAD_COLOR` applies the EXIF orientation tag (unlike IMREAD_UNCHANGED), expands
grayscale to three channels, drops alpha and converts 16-bit to 8-bit.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# One OpenCV thread per process: its thread pool does not survive the fork of a loader
# worker (the worker can hang in its first cv2 call), and the workers are the parallelism.
cv2.setNumThreads(1)


class UnreadableImageError(OSError):
    """The file is missing, truncated or not an image OpenCV can decode."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array, honouring EXIF orientation.

    Args:
        path: image file.

    Raises:
        UnreadableImageError: the file cannot be read or decoded.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        reason = "file not found" if not Path(path).is_file() else "cannot be decoded"
        raise UnreadableImageError(f"{path}: {reason}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
