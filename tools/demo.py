"""Run a trained model on images, folders of images or videos and draw what it finds.

Usage:
  python tools/demo.py CONFIG --weights CKPT --input PATH [PATH ...] --output DIR
      [key=value ...]   (e.g. model.roi_heads.score_thresh=0.5)

Detection configs: boxes with class names and scores (and, for Mask R-CNN, each instance's
mask as a translucent fill in its box's colour). Segmentation configs (`task: sem_seg`):
a colour overlay with a legend. Images are written to DIR under their own names (as .jpg
unless PNG), a video to DIR/<name>.mp4, frame by frame.
"""
from __future__ import annotations

import argparse
import colorsys
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine import setup_logging
from engine.tasks import config_task
from engine.cli import config_argument_parser

logger = logging.getLogger("demo")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
DEFAULT_VIS_THRESH = 0.5


def palette(n: int) -> np.ndarray:
    """n distinct RGB uint8 colours (evenly spaced hues)."""
    return np.asarray([[int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.8, 0.95)]
                       for i in range(n)], dtype=np.uint8).reshape(-1, 3)


def draw_detections(image: np.ndarray, det: dict[str, Any], colours: dict[int, tuple[int, ...]],
                    min_score: float, alpha: float = 0.5) -> np.ndarray:
    """Boxes with "name score" tags on a copy of an RGB image; with "masks" (D, H, W) in
    `det`, each instance's mask filled in its box's colour at opacity `alpha` first."""
    out = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 300))
    masks = det.get("masks")
    if masks is not None:
        for mask, score, label in zip(masks, det["scores"], det["labels"]):
            if score < min_score:
                continue
            colour = np.asarray(colours.get(int(label), (0, 255, 0)), dtype=np.float32)
            out[mask] = (alpha * colour + (1 - alpha) * out[mask]).astype(np.uint8)
    for box, score, label, name in zip(det["boxes"], det["scores"], det["labels"],
                                       det["class_names"]):
        if score < min_score:
            continue
        colour = colours.get(int(label), (0, 255, 0))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        text = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        ty = max(y1, th + base)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), colour, -1)
        cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out


def draw_segmentation(image: np.ndarray, mask: np.ndarray, class_names: Sequence[str],
                      colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Colour overlay of a class-id map (class 0 left uncoloured) and a legend of the classes
    present."""
    overlay = image.copy()
    present = [int(c) for c in np.unique(mask) if c != 0 and c < len(colours)]
    for c in present:
        region = mask == c
        overlay[region] = (alpha * colours[c] + (1 - alpha) * image[region]).astype(np.uint8)
    for row, c in enumerate(present):
        y = 6 + 16 * row
        cv2.rectangle(overlay, (4, y), (16, y + 12), tuple(int(v) for v in colours[c]), -1)
        cv2.putText(overlay, class_names[c], (20, y + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return overlay


def build_renderer(config: str, weights: str, overrides: Sequence[str], min_score: float
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """RGB image -> RGB picture of the predictions, for the config's task."""
    if config_task(config, overrides) == "sem_seg":
        import segmentation  # noqa: PLC0415
        seg = segmentation.Predictor(config, weights=weights, overrides=overrides)
        colours = palette(len(seg.class_names))
        return lambda img: draw_segmentation(img, seg(img)["mask"], seg.class_names, colours)
    from detection.predictor import Predictor  # noqa: PLC0415
    det = Predictor(config, weights=weights, overrides=overrides)
    rgb = palette(len(det.category_ids))
    colours = {cid: tuple(int(v) for v in rgb[i]) for i, cid in enumerate(det.category_ids)}
    return lambda img: draw_detections(img, det(img), colours, min_score)


def expand_inputs(paths: Sequence[str]) -> Iterator[Path]:
    """Files named, and the images and videos inside folders named (sorted)."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*")
                              if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif p.is_file():
            yield p
        else:
            raise FileNotFoundError(f"input not found: {p}")


def run_image(path: Path, render: Callable[[np.ndarray], np.ndarray], output: Path) -> Path:
    from engine.data import read_image  # noqa: PLC0415
    picture = render(read_image(path))
    out = output / (path.stem + (".png" if path.suffix.lower() == ".png" else ".jpg"))
    cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return out


def run_video(path: Path, render: Callable[[np.ndarray], np.ndarray], output: Path) -> Path:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    out = output / f"{path.stem}.mp4"
    writer = None
    frames = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            picture = render(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if writer is None:
                h, w = picture.shape[:2]
                writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            frames += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise ValueError(f"no frames could be read from {path}")
    logger.info("%s: %d frames", path, frames)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = config_argument_parser(__doc__)
    parser.add_argument("--weights", required=True, help="checkpoint")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or videos")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--min-score", type=float, default=DEFAULT_VIS_THRESH,
                        help="detections drawn from this score (default 0.5)")
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Render every input; returns the written files."""
    args = parse_args(argv)
    setup_logging(None)
    inputs = list(expand_inputs(args.input))
    if not inputs:
        raise FileNotFoundError(f"no images or videos in {args.input}")
    render = build_renderer(args.config, args.weights, args.overrides, args.min_score)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for path in inputs:
        is_video = path.suffix.lower() in VIDEO_SUFFIXES
        written.append((run_video if is_video else run_image)(path, render, output))
    print(f"wrote {len(written)} file(s) to {output}", flush=True)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
