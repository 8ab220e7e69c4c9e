"""Pictures of predictions, for tools/demo.py: boxes (and masks) with class names and scores,
segmentation overlays with a legend, over images, folders of images and videos."""
from __future__ import annotations

import colorsys
import functools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .data import IMAGE_SUFFIXES, UnreadableImageError, files_under, read_image
from .data.images import opened_header
from .files import UnwritableFolderError, atomic_write

logger = logging.getLogger(__name__)
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts",
                  ".m2ts", ".wmv", ".flv", ".3gp", ".ogv", ".divx", ".vob", ".asf", ".f4v",
                  ".3g2", ".mxf"}
# the brands of an `ftyp` box that are images (HEIF, AVIF), not videos
IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
VIDEO_FPS = 25.0  # written where a video's own rate is unknown, or one mp4v cannot take
Renderer = Callable[[np.ndarray], np.ndarray]  # RGB image -> RGB picture of the predictions


GOLDEN_TURN = (5 ** 0.5 - 1) / 2


def palette(n: int) -> np.ndarray:
    """n RGB uint8 colours, distinct up to 256 and neighbours far apart at any n: hues a
    golden-ratio turn apart (evenly spaced hues made neighbouring ids, ADE20K's wall, building
    and sky among its 150, one red), in three brightnesses by turns."""
    shades = ((0.8, 0.95), (0.55, 0.8), (0.95, 0.65))  # (saturation, value)
    return np.asarray([[int(255 * c) for c in colorsys.hsv_to_rgb((i * GOLDEN_TURN) % 1,
                                                                   *shades[i % 3])]
                       for i in range(n)], dtype=np.uint8).reshape(-1, 3)


def drawable_name(name: str, ident: int) -> tuple[str, str | None]:
    """(text, font) of a class's tag: `name` in OpenCV's Hershey font (font None) where it
    has every character (Latin-1), else in a TrueType font that has them (`font_for`), else
    "id N" (Hershey drew each other character as "?": Chinese names all read "???")."""
    if all(ord(c) < 256 for c in name):
        return name, None
    font = font_for(name)
    if font is not None:
        return name, font
    if name not in _SAID_UNDRAWABLE:
        _SAID_UNDRAWABLE.add(name)
        logger.warning("class %r is drawn as 'id %d': no font here has its characters "
                       "(install one that has, e.g. Noto Sans CJK: fonts-noto-cjk)", name, ident)
    return f"id {ident}", None


_SAID_UNDRAWABLE: set[str] = set()
TAG_PIXELS = 12  # a TrueType tag's size, about the Hershey tags' (scale 0.4)
TAG_REFERENCE = math.sqrt(800 * 1333)  # pictures up to this many pixels' tags: the usual size


@functools.lru_cache(maxsize=None)
def font_for(text: str) -> str | None:
    """A TrueType font file with every character of `text`: matplotlib's DejaVu Sans (Greek,
    Cyrillic, Arabic, Hebrew ...) first, then the system's fonts in turn (a CJK font where
    one is installed); None where none has them all."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font
    needed = {ord(c) for c in text}
    bundled = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    for path in [bundled, *sorted(font_manager.findSystemFonts())]:
        try:
            if needed <= FT2Font(path).get_charmap().keys():
                _tag_font(path, 1.0)  # (a Pillow built without FreeType cannot draw it)
                return path
        except (OSError, RuntimeError, ImportError):  # a font FreeType cannot open
            continue
    return None


@functools.lru_cache(maxsize=None)
def _truetype(path: str, pixels: int) -> Any:
    from PIL import ImageFont
    return ImageFont.truetype(path, pixels)


def tag_scale(image_shape: tuple[int, ...]) -> float:
    """How much larger than on an 800 x 1333 image the tags of a picture are drawn: as the
    square root of its pixels (detectron2's Visualizer's rule), never smaller: a 4000 x 6000
    photo's tags at the usual size could not be read on the whole picture."""
    return max(1.0, math.sqrt(image_shape[0] * image_shape[1]) / TAG_REFERENCE)


def _hershey(scale: float) -> tuple[float, int]:
    """OpenCV's font scale and stroke thickness of tags `scale` times the usual size."""
    return 0.4 * scale, max(1, round(scale))


def _tag_font(path: str, scale: float) -> Any:
    """The TrueType font at `path` for tags `scale` times the usual size."""
    return _truetype(path, round(TAG_PIXELS * scale))


def text_size(text: str, font: str | None, scale: float = 1.0) -> tuple[int, int, int]:
    """(width, height above the baseline, depth below it) of `text` as `put_text` draws it."""
    if font is None:
        (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, *_hershey(scale))
        return width, height, base
    left, top, right, bottom = _tag_font(font, scale).getbbox(text, anchor="ls")
    return right - min(left, 0), -top, bottom


def put_text(image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, ...],
             font: str | None, scale: float = 1.0) -> None:
    """Draws `text` on `image` in place, `origin` the left end of its baseline: in OpenCV's
    Hershey font where `font` is None, else in that TrueType font; `scale` times the usual
    size."""
    if font is None:
        font_scale, thickness = _hershey(scale)
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour, thickness,
                    cv2.LINE_AA)
        return
    from PIL import Image, ImageDraw
    width, height, depth = text_size(text, font, scale)
    x0, y0 = max(0, origin[0]), max(0, origin[1] - height)
    x1 = min(image.shape[1], origin[0] + width)
    y1 = min(image.shape[0], origin[1] + depth)
    if x1 <= x0 or y1 <= y0:
        return
    region = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    ImageDraw.Draw(region).text((origin[0] - x0, origin[1] - y0), text, anchor="ls",
                                font=_tag_font(font, scale), fill=tuple(int(c) for c in colour))
    image[y0:y1, x0:x1] = np.asarray(region)


def _mask_region(mask: np.ndarray | dict[str, Any]) -> tuple[int, int, np.ndarray]:
    """(top, left, bool region) of an (H, W) mask or a COCO RLE of one: a RLE's region is its
    box's (pycocotools decodes it column by column: the whole mask indexed row by row took a
    large photo's drawing seconds a mask)."""
    if not isinstance(mask, dict):
        return 0, 0, mask
    x, y, w, h = (int(v) for v in mask_utils.toBbox(mask))
    return y, x, np.ascontiguousarray(mask_utils.decode(mask)[y:y + h, x:x + w]).view(bool)


def draw_detections(image: np.ndarray, det: dict[str, Any], colours: dict[int, tuple[int, ...]],
                    min_score: float, alpha: float = 0.5) -> np.ndarray:
    """Boxes with "name score" tags on a copy of an RGB image; with "masks" (D, H, W) in
    `det` (or D COCO RLEs, decoded one at a time), each instance's mask filled in its box's
    colour at opacity `alpha` first. Without
    "scores" (annotations) every box is drawn, tagged with its name alone. A name no font
    here can draw is tagged "id N", N from "category_ids" (the dataset's) where `det` has
    them, else its label."""
    out = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 300))
    scale = tag_scale(image.shape)
    scores = det.get("scores")
    shown = (np.ones(len(det["boxes"]), dtype=bool) if scores is None
             else np.asarray(scores) >= min_score)
    masks = det.get("masks")
    if masks is not None:  # one at a time: masks[shown] copied a photo's 100 masks (GBs)
        for i in np.flatnonzero(shown):
            top, left, mask = _mask_region(masks[i])
            region = out[top:top + mask.shape[0], left:left + mask.shape[1]]
            colour = np.asarray(colours.get(int(det["labels"][i]), (0, 255, 0)),
                                dtype=np.float32)
            region[mask] = (alpha * colour + (1 - alpha) * region[mask]).astype(np.uint8)
    for i in np.flatnonzero(shown):
        box, label, name = det["boxes"][i], det["labels"][i], det["class_names"][i]
        colour = colours.get(int(label), (0, 255, 0))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        name, font = drawable_name(name, int(det.get("category_ids", det["labels"])[i]))
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        tw, th, base = text_size(text, font, scale)
        ty = max(y1, th + base)
        tx = max(0, min(x1, image.shape[1] - tw))  # a tag at the right edge stays readable
        cv2.rectangle(out, (tx, ty - th - base), (tx + tw, ty), colour, -1)
        put_text(out, text, (tx, ty - base), (0, 0, 0), font, scale)
    return out


IGNORE_COLOUR = np.asarray([128, 128, 128], dtype=np.uint8)
# class 0 so named is left uncoloured; also the placeholder of unnamed classes, whose 0 is
# background in the torchvision / VOC weights it mostly comes with
BACKGROUND_NAMES = {"background", "_background_", "bg", "__background__", "class_0"}
LEGEND_PANEL = 32  # the grey of a legend drawn beside a picture


def draw_segmentation(image: np.ndarray, mask: np.ndarray, class_names: Sequence[str],
                      colours: np.ndarray, alpha: float = 0.5,
                      ignore_index: int | None = None, legend_beside: bool = False
                      ) -> np.ndarray:
    """Colour overlay of a class-id map and a legend of the classes present (class 0 left
    uncoloured when named background, as VOC's and COCO's; ADE20K's "wall" or Cityscapes'
    "road" are coloured); pixels of `ignore_index` (annotations) in grey, named "ignore".
    The legend is drawn in the top-left corner (a picture of the image's size, as a video's
    frames need), or with `legend_beside` on a dark panel right of the image, which it then
    hides nothing of (a small image's crop, which a corner legend covered)."""
    overlay = image.copy()
    values = [int(c) for c in np.unique(mask)]
    first = 1 if class_names and class_names[0].strip().lower() in BACKGROUND_NAMES else 0
    present = [(c, *drawable_name(class_names[c], c), colours[c]) for c in values
               if first <= c < len(colours)]
    if ignore_index is not None and ignore_index in values:
        present.append((ignore_index, "ignore", None, IGNORE_COLOUR))
    for c, _, _, colour in present:
        region = mask == c
        overlay[region] = (alpha * colour + (1 - alpha) * image[region]).astype(np.uint8)
    if not present:
        return overlay
    width = max(text_size(name, font)[0] for _, name, font, _ in present)
    left = 0
    if legend_beside:
        height, left = max(overlay.shape[0], 10 + 16 * len(present)), overlay.shape[1]
        picture = np.full((height, left + width + 26, 3), LEGEND_PANEL, dtype=np.uint8)
        picture[:overlay.shape[0], :left] = overlay
        overlay = picture
    else:  # on a dark backing, so that white names read on any image
        corner = overlay[2:8 + 16 * len(present), 2:24 + width]
        corner[...] = corner // 3
    for row, (_, name, font, colour) in enumerate(present):
        y = 6 + 16 * row
        cv2.rectangle(overlay, (left + 4, y), (left + 16, y + 12), tuple(int(v) for v in colour),
                      -1)
        put_text(overlay, name, (left + 20, y + 11), (255, 255, 255), font)
    return overlay


def expand_inputs(paths: Sequence[str], output: Path | None = None
                  ) -> Iterator[tuple[Path, Path]]:
    """(file, name under the output folder) for the files named, and for the images and
    videos inside the folders named (sorted, with their paths inside the folder). An `output`
    folder inside a folder named is left out of it (a rerun would draw its pictures again);
    the folder named itself is refused (its pictures would be inputs of a rerun).

    Raises:
        FileNotFoundError: an input that is not there. UnwritableFolderError: `output` is a
            folder named.
    """
    out = output.resolve() if output is not None else None
    for p in map(Path, paths):
        if p.is_dir() and out == p.resolve():
            raise UnwritableFolderError(
                f"--output {output} is the input folder {p}: a rerun would draw the pictures "
                f"written there again; give another folder (one inside it is left out of the "
                f"inputs)")
        if p.is_dir():
            inner = out is not None and out != p.resolve() and out.is_relative_to(p.resolve())
            files = [f for f in files_under(p)
                     if not (inner and f.resolve().is_relative_to(out))]
            found = [(f, f.relative_to(p)) for f in files
                     if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
            if len(found) < len(files):
                suffixes = sorted({f.suffix.lower() or "(none)" for f in files} - (
                    IMAGE_SUFFIXES | VIDEO_SUFFIXES))
                logger.info("%s: left out %d files that are no images or videos by their "
                            "suffix (%s)", p, len(files) - len(found), " ".join(suffixes))
            if not found:  # (alone, the tool stops: nothing to draw)
                logger.warning("%s holds no images or videos (%s)", p,
                               " ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES)))
            yield from found
        elif p.is_file():
            yield p, Path(p.name)
        else:
            raise FileNotFoundError(f"input not found: {p}")


def output_paths(inputs: Sequence[tuple[Path, Path]], output: Path, *,
                 unique_stems: bool = False, reserved: Sequence[str] = (),
                 video_folders: bool = False) -> list[Path]:
    """Where each input's picture goes: its name under `output` as .mp4 (videos), .png (PNG
    images) or .jpg, and "-2", "-3", ... added to names that would repeat (img.jpg and
    img.jpeg, or files of the same name named from different folders) or be an input (an
    output folder that holds the inputs). Names are compared without case: on macOS's and
    Windows' file systems IMG_1.jpg is the input IMG_1.JPG. `unique_stems`: also without
    their suffixes (img.jpg, img-2.png), so that files named after the pictures with another
    suffix (tools/demo.py's img.json) do not meet either. `reserved`: names at the top of
    `output` that no picture takes (tools/demo.py's predictions/ folder: an input folder of
    that name goes to predictions-2/). `video_folders`: a video's outputs include a folder of
    its name (a segmentation's frame maps, predictions/clip/): a video named as a folder of
    the inputs (clip.mp4 beside ffmpeg's clip/000000.png) goes to clip-2.mp4."""
    def key(path: Path) -> str:
        return str(path.resolve().with_suffix("") if unique_stems else path.resolve()).casefold()

    folded = {r.casefold() for r in reserved}
    names = [Path(f"{name.parts[0]}-2", *name.parts[1:])
             if len(name.parts) > 1 and name.parts[0].casefold() in folded else name
             for _, name in inputs]
    taken = {key(path) for path, _ in inputs}
    # (a folder's own path: key() would cut a dotted name's "suffix")
    folders = {str((output / folder).resolve()).casefold() for name in names
               for folder in name.parents if folder != Path(".")} if video_folders else set()
    outs = []
    for (path, _), name in zip(inputs, names):
        ext = (".mp4" if is_video(path) else ".png" if path.suffix.lower() == ".png"
               else ".jpg")
        out, n = output / name.with_suffix(ext), 1
        while key(out) in taken or ext == ".mp4" and key(out) in folders:
            n += 1
            out = output / name.with_name(f"{name.stem}-{n}{ext}")
        taken.add(key(out))
        outs.append(out)
    return outs


def is_video(path: Path) -> bool:
    """Whether `path` is drawn as a video: by its suffix, or, where that is neither an
    image's nor a video's (a file named on the command line: clip.xvid, anim.gif), by its first
    bytes: a video container's, or an animated GIF's (OpenCV reads its frames as a video's)."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES or suffix in IMAGE_SUFFIXES:
        return suffix in VIDEO_SUFFIXES
    try:
        with open(path, "rb") as f:
            head = f.read(189)
    except OSError:  # (said where it is read)
        return False
    if head[:6] in (b"GIF87a", b"GIF89a"):
        try:  # (at any size: a 180-megapixel GIF was Pillow's DecompressionBombError here)
            with opened_header(path) as gif:
                return getattr(gif, "n_frames", 1) > 1
        except (OSError, ValueError, SyntaxError):  # (said where it is read)
            return False
    return (head[4:8] == b"ftyp" and head[8:12] not in IMAGE_BRANDS  # MP4, MOV, 3GP
            or head[:4] == b"RIFF" and head[8:12] == b"AVI "
            or head[:4] in (b"\x1aE\xdf\xa3",  # Matroska, WebM
                            b"\x30\x26\xb2\x75",  # ASF, WMV
                            b"\x00\x00\x01\xba",  # MPEG program stream, VOB
                            b"OggS")
            or head[:3] == b"FLV"
            or len(head) == 189 and head[0] == head[188] == 0x47)  # MPEG transport stream


def write_picture(picture: np.ndarray, out: Path) -> Path:
    """Write an RGB picture into the image file `out` (its folders made), whole or not at
    all (a kill left a cut picture beside its complete JSON); returns it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # encoded here and written by Python: OpenCV's own file writing fails on Windows for
    # paths outside the system code page (non-ASCII folder names)
    ok, encoded = cv2.imencode(out.suffix, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode a picture as {out.suffix} for {out}")
    atomic_write(out, lambda f: f.write(encoded.tobytes()), binary=True, sync=False)
    return out


def run_image(path: Path, render: Callable[[np.ndarray], np.ndarray], out: Path) -> Path:
    """Draw one image into the file `out`; returns it."""
    return write_picture(render(read_image(path)), out)


def run_video(path: Path, render: Callable[[np.ndarray], np.ndarray], out: Path) -> Path:
    """Draw a video frame by frame into the .mp4 file `out`; returns it."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        why = ("no permission to read it" if not os.access(path, os.R_OK) else
               "an empty file" if path.stat().st_size == 0 else
               "an MP4/MOV file without its index (no 'moov' box, which a camera writes "
               "last): a recording cut or never finished, which no player reads (a repair "
               "tool such as untrunc rebuilds the index from a whole file of the same camera)"
               if lacks_mp4_index(path) else
               "OpenCV's FFmpeg reads neither its container nor its codec, or it is no video "
               "(`ffmpeg -i FILE` names them; `ffmpeg -i FILE -c:v libx264 OUT.mp4` "
               "re-encodes one)")
        raise UnreadableImageError(f"cannot open video {path}: {why}")
    fps = capture.get(cv2.CAP_PROP_FPS) or VIDEO_FPS
    counted = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # (the header's: may be off)
    out.parent.mkdir(parents=True, exist_ok=True)
    # drawn into a file beside `out`, which it replaces once complete: a run stopped partway
    # (Ctrl-C, an error) leaves an earlier run's complete video as it was
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    writer = None
    frames = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            picture = render(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            # mp4v takes even sizes alone (it cut an odd last row or column): padded black
            h, w = picture.shape[:2]
            picture = np.pad(picture, ((0, h % 2), (0, w % 2), (0, 0)))
            if writer is None:
                writer = _video_writer(partial, fps, picture.shape[1], picture.shape[0], out)
            writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            frames += 1
        if writer is not None:
            writer.release()
            writer = None
            try:
                os.replace(partial, out)
            except OSError as e:  # Windows: the earlier video open in a player
                kept = partial.with_name(f"{out.stem}.new{out.suffix}")
                os.replace(partial, kept)
                raise UnwritableFolderError(f"cannot replace {out} ({e.strerror or e}); the "
                                            f"video drawn now is {kept}") from None
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        partial.unlink(missing_ok=True)
    if frames == 0:
        raise UnreadableImageError(f"no frames could be read from {path}")
    if frames < counted - 1:  # (a header's count may be one off; a cut file's is far)
        logger.warning("%s: read %d of the %d frames its header counts (a cut or damaged "
                       "file?): drew those", path, frames, counted)
    else:
        logger.info("%s: %d frames", path, frames)
    return out


def lacks_mp4_index(path: Path) -> bool:
    """Whether `path` is an ISO media file (MP4, MOV: an `ftyp` box first) none of whose
    top-level boxes is its index (`moov`). The boxes' headers alone are read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(8)[4:8] != b"ftyp":
            return False
        position = 0
        while position + 8 <= size:
            f.seek(position)
            header = f.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if kind == b"moov":
                return False
            if length == 1:  # (a 64-bit length follows the type)
                length = int.from_bytes(header[8:16], "big")
            if length < 8:  # (0: the box runs to the end of the file)
                break
            position += length
    return True


def _video_writer(path: Path, fps: float, width: int, height: int, out: Path) -> Any:
    """An mp4v writer of `path` (drawn there for `out`), at the video's rate or, where mp4v
    cannot take that (a damaged header's 0.001 or 1e6 frames per second), at VIDEO_FPS."""
    for rate in dict.fromkeys((fps, VIDEO_FPS)):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), rate,
                                 (width, height))
        if writer.isOpened():
            if rate != fps:
                logger.warning("%s: the video's frame rate %g cannot be written: drawn at %g",
                               out, fps, rate)
            return writer
    raise UnwritableFolderError(f"OpenCV cannot write the .mp4 video {out} (no mp4v encoder "
                                f"in this OpenCV?)")
