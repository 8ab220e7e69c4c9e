"""Run a trained model on images, folders of images or videos and draw what it finds.

Usage:
  python tools/demo.py CONFIG --weights CKPT --input PATH [PATH ...] --output DIR
      [--min-score 0.5] [--save-json] [key=value ...]   (e.g. model.roi_heads.nms_thresh=0.6)

Detection configs: boxes with class names and scores (and, for Mask R-CNN, each instance's
mask as a translucent fill in its box's colour). Segmentation configs (`task: sem_seg`):
a colour overlay with a legend. Images are written to DIR under their own names (as .jpg
unless PNG; from a folder, with their paths inside it), a video to DIR/<name>.mp4, frame by
frame; a name that would repeat (with --save-json: also without its suffix) gets "-2",
"-3", ... An unreadable image is skipped with a warning, the others drawn, and the run then
fails naming the skipped ones. Under `torchrun --nproc_per_node=N` (one process per GPU) each
process draws its share of the inputs (every N-th), and the first says what all wrote.

--save-json also writes the predictions, each file atomically:
  detection: beside each picture DIR/<name>.json, {"image": the input's path, "height",
    "width", "boxes": [[x1, y1, x2, y2], ...] in the input's pixels, "scores",
    "class_names", "category_ids": the dataset's category ids (as in tools/eval.py's results;
    1..K for weights that record none), and for Mask R-CNN "masks": COCO RLEs {"size": [H,
    W], "counts": str} (pycocotools.mask.decode)}. The detections are those drawn, scoring
    --min-score or more (the model's own threshold is --min-score already; mmdetection's
    demo saves all it returns); a lower --min-score keeps more. A video gets
    DIR/<name>.jsonl, one line per frame: {"video", "frame" (0, 1, ...), "height", ...}.
  sem_seg: each image's class map as a uint8 PNG of class ids, DIR/predictions/<name>.png
    (as tools/eval.py --save-predictions writes them, without its data.reduce_zero_label
    offset), a video's as DIR/predictions/<name>/<frame, 6 digits>.png, and the class
    names, index = class id, once as DIR/classes.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.engine import setup_logging  # noqa: E402
from resnet_detect.engine.cli import config_argument_parser, run_tool  # noqa: E402
from resnet_detect.engine.config import ConfigError  # noqa: E402
from resnet_detect.engine.data import UnreadableImageError, listing  # noqa: E402
from resnet_detect.engine.export import is_onnx  # noqa: E402
from resnet_detect.engine.files import (atomic_write, atomic_write_json,  # noqa: E402
                                        file_versions, remove_path, replace_folder,
                                        writable_folder)
from resnet_detect.engine.distributed import (all_gather_object, barrier, get_rank,  # noqa: E402
                                              get_world_size, init_distributed,
                                              is_main_process)
from resnet_detect.engine.tasks import config_task, load_task_config, task_module  # noqa: E402
from resnet_detect.segmentation.records import write_label_map  # noqa: E402
from resnet_detect.engine.visualize import (expand_inputs, is_video, output_paths,  # noqa: E402
                                            run_image, run_video)

DEFAULT_VIS_THRESH = 0.5
PREDICTIONS = "predictions"  # a segmentation's class maps (--save-json)
OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=.*")  # a config key=value
logger = logging.getLogger("demo")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = config_argument_parser(__doc__)
    parser.add_argument("--weights", required=True, help="checkpoint")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or videos")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--min-score", type=float, default=None,
                        help=f"detections drawn from this score (default {DEFAULT_VIS_THRESH}; "
                             f"detection models only)")
    parser.add_argument("--save-json", action="store_true",
                        help="also write the predictions: JSON beside each picture (sem_seg: "
                             "class-map PNGs in DIR/predictions and DIR/classes.json)")
    args = parser.parse_intermixed_args(argv)
    # `--input a.jpg model.roi_heads.score_thresh=0.3`: --input takes every word after it
    overrides = [i for i in args.input if OVERRIDE.fullmatch(i) and not Path(i).exists()]
    args.input = [i for i in args.input if i not in overrides]
    args.overrides += overrides
    if not args.input:
        parser.error("--input: no image, folder or video given, only key=value overrides")
    if not all(i.strip() for i in args.input):  # "" is the current folder, read whole
        parser.error("--input: an empty path; name images, folders or videos")
    if args.min_score is not None and not 0 <= args.min_score <= 1:  # (NaN too)
        parser.error(f"--min-score must be a score in [0, 1], got {args.min_score}")
    return args


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Render every input; returns the written files."""
    args = parse_args(argv)
    setup_logging(None)
    inputs = list(expand_inputs(args.input, Path(args.output)))
    if not inputs:
        raise FileNotFoundError(f"no images or videos in {args.input}")
    task = config_task(args.config, args.overrides)
    build_renderer = getattr(task_module(task), "build_renderer", None)
    if build_renderer is None:
        raise ConfigError(f"tools/demo.py draws detection and sem_seg models; {args.config} is "
                         f"a {task!r} config")
    if args.min_score is None:
        args.min_score = DEFAULT_VIS_THRESH
    elif task != "detection":
        logger.warning("--min-score %g has no effect: a %s model draws every pixel's class, "
                       "not scored detections", args.min_score, task)
    output = writable_folder(args.output, "--output")
    # the config's train.device, as tools/eval.py (auto: a GPU when there is one)
    # (a day's collective timeout: the processes meet once all drew their share, a long video
    # among it)
    device = init_distributed(load_task_config(args.config, args.overrides)[1].train.device,
                              timeout_s=24 * 3600.0)
    render = build_renderer(args.config, args.weights, args.overrides, args.min_score,
                            device=device)
    # (not compared in a folder of more: the walk alone would cost seconds)
    earlier = (file_versions(output, limit=10_000) or {}) if is_main_process() else {}
    output.mkdir(parents=True, exist_ok=True)
    if args.save_json and task == "sem_seg" and is_main_process():
        atomic_write_json(list(render.class_names), output / "classes.json")
    barrier()  # (the folder as it was, seen before any process writes)
    # (a segmentation's class maps go to predictions/: no picture there, and a video's maps
    # into a folder of its name)
    maps = args.save_json and task == "sem_seg"
    jobs = list(enumerate(zip(inputs, output_paths(
        inputs, output, unique_stems=args.save_json, reserved=[PREDICTIONS] if maps else [],
        video_folders=maps))))
    written, unreadable, too_large = [], [], []  # (the last two: (input index, message))
    videos = 0
    for index, ((path, _), out) in jobs[get_rank()::get_world_size()]:
        video = is_video(path)
        try:
            if args.save_json:
                written.append(run_saving(path, render, out, output, task, video))
            else:
                written.append((run_video if video else run_image)(path, render, out))
            videos += video
        except UnreadableImageError as err:  # the others are still drawn
            logger.warning("skipping unreadable input: %s", err)
            unreadable.append((index, str(path)))
        except MemoryError as err:  # an exported graph on a large photo
            logger.warning("skipping %s: %s", path, err)
            too_large.append((index, f"{path}: {err}"))
    # every process's share, told to the first, which says what all did
    shares = all_gather_object((len(written), getattr(render, "drawn", None), unreadable,
                                too_large, videos))
    if not is_main_process():
        return written
    wrote = sum(share[0] for share in shares)
    drawn = None if shares[0][1] is None else sum(share[1] for share in shares)
    unreadable = [path for _, path in sorted(p for share in shares for p in share[2])]
    too_large = [problem for _, problem in sorted(p for share in shares for p in share[3])]
    videos = sum(share[4] for share in shares)
    drawings = (f"{wrote - videos} picture(s) and {videos} video(s)" if videos
                else f"{wrote} picture(s)")
    saved = {"detection": "and their JSON",
             "sem_seg": "and their class maps (predictions/, classes.json)"}
    print(f"wrote {drawings} {saved[task] if args.save_json else ''}".rstrip() + f" to {output}"
          + ("" if drawn is None else f": {drawn} detections of score {args.min_score} or more"
             + ("" if drawn or not wrote else _none_drawn_hint(render, args))), flush=True)
    left = sorted(str(path.relative_to(output)) for path, version in earlier.items()
                  if file_versions(path).get(path) == version)
    if left:  # (another run's, perhaps of other weights: the folder does not tell them apart)
        print(f"{output} also holds {len(left)} file(s) this run did not write: "
              f"{', '.join(left[:5])}{' ...' if len(left) > 5 else ''}", flush=True)
    if unreadable or too_large:
        raise UnreadableImageError(
            f"{len(unreadable) + len(too_large)} of {len(inputs)} inputs could not be "
            f"{'read' if not too_large else 'drawn'}"
            + (" (the others were drawn)" if wrote else "") + ":"
            + listing(unreadable + too_large))
    return written


def run_saving(path: Path, render: Any, out: Path, output: Path, task: str,
               video: bool) -> Path:
    """Draw `path` into `out` as `run_image` / `run_video` do, and write its predictions
    (--save-json); returns `out`."""
    def rendering(keep: Any) -> Any:  # render, handing keep() each image and prediction
        def render_and_keep(image: Any) -> Any:
            prediction = render.predict(image)
            keep(image, prediction)
            return render.draw(image, prediction)
        return render_and_keep

    if task == "sem_seg":  # class-map PNGs
        png = output / PREDICTIONS / out.relative_to(output).with_suffix(".png")
        if not video:
            return run_image(path, rendering(lambda _, mask: write_label_map(
                mask, png, atomic=True)), out)
        # the frames' maps drawn into a folder beside theirs, which they replace once the video
        # is complete: a run stopped partway (or a shorter video) left a mixture of two runs
        frames, folder = itertools.count(), png.with_suffix("")
        partial = folder.with_name(f".{folder.name}.partial")
        remove_path(partial, ignore_errors=True)
        try:
            run_video(path, rendering(lambda _, mask: write_label_map(
                mask, partial / f"{next(frames):06d}.png")), out)
            replace_folder(partial, folder)
        finally:
            remove_path(partial, ignore_errors=True)
        return out

    def record(image: Any, detections: dict[str, Any]) -> dict[str, Any]:
        return {"height": image.shape[0], "width": image.shape[1],
                **render.as_json(detections)}

    if not video:
        return run_image(path, rendering(lambda image, detections: atomic_write_json(
            {"image": str(path), **record(image, detections)}, out.with_suffix(".json"))), out)
    frames = itertools.count()

    def write_lines(f: Any) -> None:  # the .jsonl replaced once the video is complete
        run_video(path, rendering(lambda image, detections: f.write(json.dumps(
            {"video": str(path), "frame": next(frames), **record(image, detections)}) + "\n")),
            out)
    atomic_write(out.with_suffix(".jsonl"), write_lines)
    return out


def _none_drawn_hint(render: Any, args: argparse.Namespace) -> str:
    """Why a run drew no detection: --min-score, or an export's threshold: the one it was
    made with, or a higher one given here."""
    floor = render.predictor.cfg.model.roi_heads.score_thresh
    if not (is_onnx(args.weights) and floor > args.min_score):
        return " (a lower --min-score shows weaker ones)"
    exported = render.predictor.model.metadata.get("score_thresh")
    if exported is not None and floor > exported:
        return (f" (model.roi_heads.score_thresh={floor}, this run's config, leaves out the "
                f"graph's weaker detections; it was exported with {exported})")
    return (f" (an export keeps the score threshold it was exported with, {floor}: export "
            f"again with a lower model.roi_heads.score_thresh)")


if __name__ == "__main__":
    run_tool(main)
