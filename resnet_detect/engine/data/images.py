"""Image decoding with OpenCV, one policy for every task: H x W x 3 uint8 RGB out, or
`UnreadableImageError` naming the file (datasets skip such images and the runner counts them).

`cv2.IMREAD_COLOR` applies the EXIF orientation tag (unlike IMREAD_UNCHANGED), expands
grayscale to three channels, drops alpha and converts 16-bit to 8-bit.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

# the file suffixes taken for images where a folder is searched (any case)
# torchvision's ImageFolder extensions (IMG_EXTENSIONS)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff",
                            ".webp"})


# a Synology NAS's thumbnails (JPEGs of every picture), a zip made on macOS's resource forks
NOT_DATA_FOLDERS = frozenset({"@eaDir", "__MACOSX"})


def files_under(folder: str | os.PathLike,
                real_folders: dict[str, Path] | None = None) -> list[Path]:
    """Every file under `folder`, sorted: through symlinked folders too (each real folder once),
    leaving out hidden folders and files (.ipynb_checkpoints, .git, macOS's ._name copies) and
    the folders other systems write beside pictures (NOT_DATA_FOLDERS). `real_folders`, when
    given, gets {real path: folder as walked} of each folder that holds one of the files."""
    return [Path(p) for p in file_paths_under(folder, real_folders)]


def file_paths_under(folder: str | os.PathLike,
                     real_folders: dict[str, Path] | None = None) -> list[str]:
    """`files_under` as strings, in its order (a Path sorts by its parts): an ImageNet-sized
    tree's million Path objects and their comparisons took seconds at every start."""
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        # sorted, real folders before links: which path names a folder reached twice does
        # not depend on the file system's listing order
        dirs[:] = sorted((d for d in dirs if not d.startswith(".") and d not in NOT_DATA_FOLDERS),
                         key=lambda d: (os.path.islink(os.path.join(root, d)), d))
        kept = [n for n in names if not n.startswith(".")]
        if kept and real_folders is not None:
            real_folders[real] = Path(root)
        files += [os.path.join(root, n) for n in kept]
    return sorted(files, key=lambda p: p.split(os.sep))


class UnreadableImageError(OSError):
    """The file is missing, truncated or not an image OpenCV can decode."""


def warn_of_unreadable(logger: logging.Logger, reason: str, said: set[str]) -> None:
    """"skipping unreadable image: REASON", once per reason in `said` (a dataset's: in each
    loader worker, which lives as long as its loader, every epoch repeated it; the run's end
    counts every skip)."""
    if reason not in said:
        said.add(reason)
        logger.warning("skipping unreadable image: %s", reason)


# inside a scan, 0xFF starts a marker unless 0x00 (a stuffed byte), a restart marker or fill
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def is_truncated_jpeg(data: bytes) -> bool:
    """A JPEG that ends before its end-of-image marker: cut short. (libjpeg decodes the missing
    part as grey and only prints a warning naming no file.) The file is walked segment by
    segment to its first end marker, so what follows it (a phone's motion-photo video, a
    maker's trailer) and thumbnails inside segments are never taken for the image's end."""
    if data[:2] != b"\xff\xd8":
        return False
    i, n = 2, len(data)
    while True:
        while i < n and data[i] == 0xFF and i + 1 < n and data[i + 1] == 0xFF:
            i += 1  # fill bytes before a marker
        if i + 2 > n:
            return True
        if data[i] != 0xFF:
            return False  # not a marker: malformed, which the decoder reports itself
        marker = data[i + 1]
        if marker == 0xD9:
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if i + 4 > n:
            return True
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            end = _SCAN_END.search(data, min(i, n))
            if end is None:
                return True
            i = end.start()


def silence_opencv_log() -> int:
    """OpenCV's log off, returning its level before: its decoders print their own lines of a
    damaged file (a cut TIFF's "TIFFReadDirectory"), naming no file, before `read_image`'s
    error or the loaders' warning names it and why. For a loader worker and a tool's process
    (a library user's own OpenCV work keeps its log)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return level


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
        size = image_size(path)
        limit = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))
        if size is not None and size[0] * size[1] > limit:
            raise UnreadableImageError(
                f"{path}: cannot be decoded: {size[1]}x{size[0]} pixels, over OpenCV's limit of "
                f"{limit} (OPENCV_IO_MAX_IMAGE_PIXELS)")
        raise UnreadableImageError(f"{path}: " + ("an empty file (0 bytes)" if not data
                                                  else "cannot be decoded" + _what_it_is(path)))
    if not _said_dark and image.max() < DARK:
        bits = _bits_per_sample(data, path)
        if bits > 8:
            _warn_of_dark_deep_image(path, bits, int(image.max()))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _what_it_is(path: str | os.PathLike) -> str:
    """For a file OpenCV cannot decode: where its header says it holds 32-bit samples
    (float or integer: a scientific TIFF's), that; else "" (truncated or damaged)."""
    try:
        with opened_header(path) as im:
            mode, kind = im.mode, im.format
    except (OSError, ValueError, SyntaxError):
        return ""
    if mode not in ("F", "I") and not mode.startswith(("F;32", "I;32")):
        return ""
    return (f" (a {kind} of 32-bit {'float' if mode.startswith('F') else 'integer'} samples, "
            f"which OpenCV does not read: convert it to 8 bits, e.g. a PNG)")


# an image of more than 8 bits per sample whose 8-bit pixels all stay under this is taken for
# 10 to 13 significant bits in a 16-bit file (a microscope's, a thermal or X-ray camera's):
# OpenCV divides each value by 256, which leaves the image nearly black
DARK = 32
_said_dark: list[str] = []


def _bits_per_sample(data: bytes, path: str | os.PathLike) -> int:
    """The file's bits per sample: a PNG's from its header, others' from Pillow's reading of
    theirs."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24:
        return data[24]
    try:
        with opened_header(path) as im:
            bits = getattr(im, "tag_v2", {}).get(258)  # a TIFF's BitsPerSample
            if bits:
                return max(bits) if isinstance(bits, tuple) else int(bits)
            return 16 if im.mode.startswith("I") else 8
    except (OSError, ValueError, SyntaxError):
        return 8


def _warn_of_dark_deep_image(path: str | os.PathLike, bits: int, brightest: int) -> None:
    """Said once per process, of the first such image."""
    _said_dark.append(str(path))
    logging.getLogger(__name__).warning(
        "%s: %d bits per sample, read as 8 bits (OpenCV divides each value by 256): "
        "its brightest pixel is %d of 255, nearly black; values of 10 or 12 bits stored in "
        "16-bit files need scaling to 8 bits before training or prediction (e.g. by 255 / "
        "their maximum). Later such images are not named", path, bits, brightest)


@contextlib.contextmanager
def opened_header(path: str | os.PathLike) -> Iterator[Image.Image]:
    """Pillow's image of `path`, opened for its header (size, mode, tags) whatever its size:
    Pillow's decompression-bomb limit guards decoding, which a header's reader never does.

    Raises:
        OSError, ValueError, SyntaxError: what Pillow raises for a file it cannot read.
    """
    # (and its warnings of a damaged file's header, "Corrupt EXIF data": the callers say what
    # they make of it, as read_image's "cannot be decoded")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(path)
        except Image.DecompressionBombError:
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        with image:
            yield image


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of an image as `read_image` returns it (after the EXIF orientation),
    from its header alone (and a PNG's chunk list); None when the header cannot be read."""
    try:
        with opened_header(path) as im:
            width, height = im.size
            stored_size = im.format in ("JPEG", "MPO", "PNG", "WEBP")  # others: displayed
            # these formats' EXIF block alone: Pillow's getexif() also takes an orientation
            # from XMP, which OpenCV does not apply
            exif = Image.Exif() if stored_size else im.getexif()
            if stored_size and "exif" in im.info:
                exif.load(im.info["exif"])
            elif im.format == "PNG" and (after := _png_exif_after_pixels(path)) is not None:
                with contextlib.suppress(Exception), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a damaged block: no orientation
                    exif.load(b"Exif\x00\x00" + after)
            rotated = exif.get(0x0112) in (5, 6, 7, 8)  # by 90 or 270 degrees
    except (OSError, ValueError, SyntaxError):
        return None
    if rotated and not stored_size:  # what OpenCV makes of it: ask it
        return decoded_size(path)
    return (width, height) if rotated else (height, width)


def _png_exif_after_pixels(path: str | os.PathLike) -> bytes | None:
    """A PNG's eXIf chunk where it follows the pixels (IDAT), which OpenCV applies and Pillow
    reads only by decoding the image: found by stepping over the chunks' lengths (unbuffered:
    a few bytes read per chunk, not the file)."""
    with open(path, "rb", buffering=0) as f:
        f.seek(8)  # the signature
        while len(head := f.read(8)) == 8:
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"eXIf":  # (a damaged length: not gigabytes in memory)
                return f.read(min(length, 1 << 20))
            if kind == b"IEND":
                return None
            f.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    return None


def decoded_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of `read_image(path)`, None when it cannot be read: exact, slow."""
    try:
        return read_image(path).shape[:2]
    except UnreadableImageError:
        return None


def _conversion_hint(image: object) -> str:
    """How to make the (H, W, 3) uint8 RGB array a Predictor takes from `image`."""
    if isinstance(image, Image.Image):
        return ("; convert with np.asarray(ImageOps.exif_transpose(image).convert('RGB')) "
                "(exif_transpose turns a phone photo as it is shown, as read_image does), or "
                "read the file with read_image")
    if type(image).__name__ == "Tensor":
        return ("; a (3, H, W) uint8 tensor converts with image.permute(1, 2, 0).cpu().numpy()"
                ", a (H, W, 3) one with image.cpu().numpy()")
    if isinstance(image, (list, tuple)) or (isinstance(image, np.ndarray) and image.ndim == 4):
        return "; it takes one image per call: call it on each image of a list or batch"
    if not isinstance(image, np.ndarray) or image.size == 0:
        return ""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return "; grayscale converts with cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)"
    if image.ndim == 3 and image.shape[2] == 4:
        return "; RGBA converts with np.ascontiguousarray(image[..., :3])"
    if image.ndim == 3 and image.shape[0] == 3:
        return "; a (3, H, W) array converts with image.transpose(1, 2, 0)"
    if image.dtype.kind == "f":
        return ("; floats in 0..1 convert with (image * 255).round().astype(np.uint8), in "
                "0..255 with image.round().astype(np.uint8)")
    if image.dtype != np.uint8:
        return "; scale it to 0..255 and use .astype(np.uint8)"
    return ""


# the channel order of a Predictor's arrays: "BGR" is OpenCV's (cv2.imread) and the
# default of detectron2's DefaultPredictor (INPUT.FORMAT) and mmdetection's inference_detector
INPUT_FORMATS = ("RGB", "BGR")


def check_input_format(input_format: str) -> str:
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, got "
                         f"{input_format!r}")
    return input_format


def predictor_images(images: Any, input_format: str = "RGB") -> list[np.ndarray]:
    """A Predictor's `predict_batch` input (a sequence, an iterable or an (N, H, W, 3)
    array) as a list of `predictor_image`s; errors name the image's index."""
    if isinstance(images, (np.ndarray, str, os.PathLike)) and np.ndim(images) != 4:
        raise ValueError("predict_batch takes a list of images (or an (N, H, W, 3) array); "
                         "call the Predictor itself for one image")
    try:  # (iter alone: a TypeError of the caller's own generator keeps its traceback)
        images = iter(images)
    except TypeError:  # None, a number: "'NoneType' object is not iterable"
        raise ValueError(f"predict_batch takes a list of images (or an (N, H, W, 3) array), "
                         f"got {type(images).__name__}") from None
    images = list(images)
    for i, image in enumerate(images):
        try:
            images[i] = predictor_image(image, input_format)
        except (ValueError, UnreadableImageError) as err:
            raise type(err)(f"images[{i}]: {err}") from None
    return images


def predictor_image(image: object, input_format: str = "RGB") -> np.ndarray:
    """A Predictor's image as the (H, W, 3) uint8 RGB array it runs on: a non-empty (H, W, 3)
    uint8 array whose channels are in `input_format` order, or an image file's path (read
    by `read_image`: RGB, EXIF orientation applied).

    Raises:
        ValueError: another kind of array or object, saying how to convert it.
        UnreadableImageError: a path that cannot be read as an image.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
            or image.dtype != np.uint8 or image.size == 0:
        desc = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                else type(image).__name__)
        raise ValueError(f"Predictor expects a non-empty (H, W, 3) uint8 {input_format} array "
                         f"or an image file's path, got {desc}{_conversion_hint(image)}")
    return np.ascontiguousarray(image[..., ::-1]) if input_format == "BGR" else image
