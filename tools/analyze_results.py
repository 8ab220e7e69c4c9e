"""A detection results file image by image: which images the model does best and worst on
(mmdetection's analyze_results.py, detectron2's visualize_json_results.py).

Usage:
  python tools/analyze_results.py CONFIG --results RESULTS.json --output DIR
      [--topk 20] [--score-thr 0.3] [--iou-type bbox|segm] [key=value ...]

RESULTS.json is a COCO results file of the config's data.val.ann_file images (tools/eval.py's
coco_instances_results.json, detectron2's or mmdetection's). Each image's AP is the AP that
COCOeval gives that image alone (its categories with objects, IoU 0.50:0.95, the config's
detections scored per image and category), as are its AP50 and AP75. Writes:
  DIR/per_image_ap.csv   every image: id, file name, objects (crowd regions not counted),
                         detections, AP, AP50, AP75 in percent; worst AP first, then the
                         images without objects (no AP)
  DIR/best/, DIR/worst/  the --topk best and worst images as RANK-APxx.x-NAME.jpg: the ground
                         truth (left) beside the detections scoring --score-thr or more
                         (right; one above the other for images too wide for that); masks
                         too where the results have them
(--topk 0: the CSV alone, an earlier run's pictures removed.) Among equal APs, images of more
objects come first. An LVIS file is scored by COCOeval's rules here, not LVIS's federated
ones. With --iou-type segm, objects without a usable mask are ignored, as tools/eval.py
ignores them (said in a warning).
"""
from __future__ import annotations

import logging
import shutil
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.engine.cli import config_argument_parser, run_tool  # noqa: E402
from resnet_detect.engine.config import ConfigError  # noqa: E402
from resnet_detect.engine.data import DatasetError, UnreadableImageError  # noqa: E402
from resnet_detect.engine.data.coco import (MAX_LISTED, brief, image_path, image_sizes,  # noqa: E402
                                             is_federated, name_by_coco_url,
                                             read_coco_json)
from resnet_detect.engine.files import replace_folder, writable_folder  # noqa: E402
from resnet_detect.engine.logging import setup_logging  # noqa: E402
from resnet_detect.engine.tasks import config_task  # noqa: E402

logger = logging.getLogger("analyze_results")


def main(argv: Sequence[str] | None = None) -> list[Any]:
    """Analyze; returns the images' figures (analyze_results.ImageScore)."""
    parser = config_argument_parser(__doc__)
    parser.add_argument("--results", required=True, help="COCO results JSON")
    parser.add_argument("--output", required=True, help="folder for the CSV and pictures")
    parser.add_argument("--topk", type=int, default=20,
                        help="best and worst images drawn (default 20; 0: none)")
    parser.add_argument("--score-thr", type=float, default=0.3,
                        help="detections drawn from this score (default 0.3; the AP counts all)")
    parser.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox",
                        help="AP of the boxes (default) or of the masks")
    args = parser.parse_intermixed_args(argv)
    if args.topk < 0:
        raise ConfigError(f"--topk is a number of images, 0 or more, got {args.topk}")
    if not 0 <= args.score_thr <= 1:
        raise ConfigError(f"--score-thr is a score, 0..1, got {args.score_thr}")
    task = config_task(args.config, args.overrides)
    if task != "detection":
        raise ConfigError(f"tools/analyze_results.py analyzes detection results; "
                          f"{args.config} is a {task!r} config")

    from resnet_detect.detection.analyze_results import CSV_FILE, per_image_ap, ranked, write_csv
    from resnet_detect.detection.config import load_config
    from resnet_detect.detection.data.splits import chosen_category_ids
    from resnet_detect.detection.evaluation import ground_truth
    from resnet_detect.detection.score_results import (check_result_categories, read_results,
                                                       rle_masks, warn_of_boxes_beyond_images)
    from resnet_detect.detection.training import scored_detections
    setup_logging(None)
    cfg = load_config(args.config, args.overrides)
    if not cfg.data.val.ann_file:
        raise ConfigError("data.val.ann_file must be set: the results are set against it")
    path = Path(args.results)
    results, types = read_results(path)
    if not results:
        logger.warning("%s holds no detections: every image with objects scores AP 0", path)
    if args.iou_type not in types:
        raise DatasetError(f"{path}: --iou-type {args.iou_type} needs " + (
            "a segmentation in every result" if args.iou_type == "segm"
            else "a bbox in every result (try --iou-type segm)"))
    ann_file = Path(cfg.data.val.ann_file)
    content = read_coco_json(ann_file)
    ids = chosen_category_ids(cfg, content, ann_file)  # data.classes' (None without it)
    gt, maskless = ground_truth(ann_file, args.iou_type, ids, data=content)
    check_result_categories(results, content, ids, path, ann_file)
    # the scored ones (those of categories the file lacks, warned of, were counted and drawn)
    scored = set(ids) if ids is not None else {c["id"] for c in content["categories"]}
    results = [r for r in results if r["category_id"] in scored]
    if maskless and not any(not a["iscrowd"] for a in gt["annotations"]):
        raise DatasetError(f"{cfg.data.val.ann_file} has no object with a usable mask: "
                           f"--iou-type segm has nothing to score (--iou-type bbox has)")
    if maskless:
        logger.warning("%s: %d objects without a usable mask are ignored (scored as crowd "
                       "regions over their boxes, drawn as such; annotation ids %s)",
                       cfg.data.val.ann_file, len(maskless), brief(maskless, MAX_LISTED))
    if cfg.data.val.img_dir:  # LVIS v0.5's COCO 2014 names: drawn from their coco_url's file
        for img in gt["images"]:
            name_by_coco_url(img, Path(cfg.data.val.img_dir))
    sizes = image_sizes(gt)
    foreign = sorted({r["image_id"] for r in results} - sizes.keys())
    if foreign:
        raise DatasetError(f"{path}: results of images that {cfg.data.val.ann_file} lacks "
                           f"(ids {brief(foreign, 10)}): results of another split?")
    warn_of_boxes_beyond_images(results, sizes, path)
    if "segm" in types:
        results = rle_masks(results, sizes, path)
    output = writable_folder(args.output, "--output")
    scores = per_image_ap(gt, results, iou_type=args.iou_type,
                          max_dets=scored_detections(cfg))
    write_csv(scores, output / CSV_FILE)
    best = ranked(scores, best=True)
    rules = " (by COCO's rules: not LVIS's federated AP)" if is_federated(content) else ""
    print(f"{len(best)} images ranked by {args.iou_type} AP{rules}, {len(scores) - len(best)} "
          f"without objects not ranked: {output / CSV_FILE}", flush=True)
    for title, chosen in (("worst", ranked(scores, best=False)[:5]), ("best", best[:5])):
        print(f"  {title}: " + ", ".join(f"{s.file_name} {100 * s.ap:.1f}" for s in chosen),
              flush=True)
    if not args.topk:  # an earlier run's pictures would be taken for these results'
        for folder in ("best", "worst"):
            shutil.rmtree(output / folder, ignore_errors=True)
        return scores
    drawn, failed = draw_folders(gt, results, scores, args, Path(cfg.data.val.img_dir),
                                 output, masks="segm" in types)
    print(f"drew the {drawn} best and worst images: {output / 'best'}, {output / 'worst'}",
          flush=True)
    if failed:
        raise UnreadableImageError("these images could not be read or drawn, the others are:"
                                   + "".join(f"\n  {e}" for e in failed))
    return scores


def draw_folders(gt: dict[str, Any], results: list[dict[str, Any]], scores: list[Any],
                 args: Any, img_dir: Path, output: Path, *, masks: bool
                 ) -> tuple[int, list[str]]:
    """DIR/best/ and DIR/worst/, each drawn beside them and then put in place of an earlier
    one; returns (the images drawn in each, why those not drawn were not)."""
    from resnet_detect.detection.analyze_results import draw_side_by_side, ranked
    from resnet_detect.engine.data.images import read_image
    from resnet_detect.engine.visualize import palette, write_picture
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    colours = palette(len(categories))
    anns, dets = defaultdict(list), defaultdict(list)
    for ann in gt["annotations"]:
        anns[ann["image_id"]].append(ann)
    for r in results:
        dets[r["image_id"]].append(r)
    failed, drawn = [], 0
    for folder in ("best", "worst"):
        chosen = ranked(scores, best=folder == "best")[:args.topk]
        partial = output / f".{folder}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            for rank, score in enumerate(chosen, start=1):
                name = Path(score.file_name)
                ext = ".png" if name.suffix.lower() == ".png" else ".jpg"
                try:
                    image = read_image(image_path(img_dir, score.file_name))
                    picture = draw_side_by_side(image, anns[score.image_id],
                                                dets[score.image_id], score, categories,
                                                colours, score_thr=args.score_thr, masks=masks)
                    write_picture(picture, partial /
                                  f"{rank:03d}-AP{100 * score.ap:.1f}-{name.stem}{ext}")
                except OSError as err:  # unreadable, or too large for its format
                    logger.warning("%s", err)
                    failed.append(str(err))
                    continue
                drawn += folder == "best"
            replace_folder(partial, output / folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return drawn, list(dict.fromkeys(failed))


if __name__ == "__main__":
    run_tool(main)
