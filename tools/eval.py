"""Evaluate trained weights on a config's validation split.

Usage:
  python tools/eval.py CONFIG --weights CKPT --output DIR [key=value ...]
      [--backend pycocotools|faster_coco_eval] [--save-predictions]
  python tools/eval.py CONFIG --results RESULTS.json --output DIR   (detection: scores a
      results file already written, this project's, detectron2's or mmdetection's, without
      a model; DIR/metrics.json has "results" in place of "weights")
  ... --confusion-matrix [--score-thr 0.3]   (detection: also DIR/confusion_matrix.csv and
      .png, mmdetection's confusion_matrix.py; resnet_detect/detection/confusion.py; sem_seg:
      DIR/confusion_matrix.csv of pixel counts, ground truth by prediction, and .png)
  ... --error-analysis   (detection: also DIR/error_analysis/bbox/ and, for masks, segm/,
      mmdetection's coco_error_analysis.py: PR curves C75, C50, Loc, Sim, Oth, BG, FN, overall
      and per category, and their APs in error_analysis.json;
      resnet_detect/detection/error_analysis.py)
  torchrun --nproc_per_node=N tools/eval.py ...   (each process scores its share)

Detection (COCO box AP on data.val.ann_file / data.val.img_dir): prints the 12 standard
numbers and a per-category AP, AP50, AP75, APs, APm, APl table; writes
DIR/coco_instances_results.json (COCO results, dataset category ids, RLE masks for Mask R-CNN)
and DIR/metrics.json as {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_category":
{name: AP}, "per_category_AP50", "per_category_AP75", "per_category_APs", "_APm", "_APl", in
percent (null where undefined), and "stats": the 12 COCOeval numbers
as fractions (-1 where undefined)}, "images": {...}, "weights": CKPT}, as a training's
metrics.json, with the same for the masks under "segm" when the model has a mask head
(model.mask_on); an LVIS file (images with neg_category_ids) is scored with LVIS's federated
AP and adds "APr", "APc", "APf". A val file without annotations (COCO's test-dev image info)
gets its results file written and nothing scored ("bbox": null). Weights are this project's
checkpoints or a torchvision fasterrcnn_resnet50_fpn / maskrcnn_resnet50_fpn state dict
(labels = COCO ids); weights whose classes are named differently from the file's categories of
the same ids are refused. An --output holding the evaluation of other weights is refused (the
same weights again replace theirs).

Segmentation (`task: sem_seg` configs): mIoU, pixel accuracy and per-class IoU in percent,
written to DIR/metrics.json as {"sem_seg": {...}, "images": {...}, "weights": CKPT}; with
--save-predictions also each image's predicted class map as DIR/predictions/<its path under
data.val.img_dir>.png (uint8 class ids, mmsegmentation's format_only), also for a val split
without labels (data.val.mask_dir=null, or a COCO file without annotations), then unscored.
Classifiers (`task: classification`, tools/pretrain.py's configs): top-1 and top-5 in percent
on data.root/data.val_split, written to DIR/metrics.json as {"classification": {"top1",
"top5"}, "images": {...}, "weights": CKPT}; weights are tools/pretrain.py's checkpoints (labels:
their recorded class names) or torchvision / timm classifier weights (labels: the val folder's
classes, sorted, as ImageNet's 1000 synsets are), or an export of either (tools/export.py's
folder or model.onnx, float32 or int8), run by ONNX Runtime on the crops its export.json's
resize makes. An export's metrics.json also holds "exported_from": the checkpoint it was made
from (path and SHA-256), as its export.json records it.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.engine import cleanup, init_distributed, is_main_process, setup_logging  # noqa: E402
from resnet_detect.engine.confusion_files import CSV_FILE, PNG_FILE  # noqa: E402
from resnet_detect.engine.distributed import collective_timeout_s  # noqa: E402
from resnet_detect.engine.files import file_versions, writable_folder  # noqa: E402
from resnet_detect.engine.run_lock import exclusive_tool_folder  # noqa: E402
from resnet_detect.engine.checkpoint import POINTER  # noqa: E402
from resnet_detect.engine.config import ConfigError  # noqa: E402
from resnet_detect.engine.train_settings import check_num_workers  # noqa: E402
from resnet_detect.engine.same_everywhere import (done_by_the_main_process,  # noqa: E402
                                                   done_everywhere)
from resnet_detect.engine.cli import config_argument_parser, run_tool  # noqa: E402
from resnet_detect.engine.tasks import config_task, load_task_config, task_module  # noqa: E402

TOOL = "tools/eval.py"
CONFUSION_SCORE_THR = 0.3  # mmdetection's confusion_matrix.py default


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = config_argument_parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="checkpoint (or exported model.onnx) to evaluate")
    source.add_argument("--results", help="detection: a COCO results JSON to score instead "
                                          "of running a model")
    parser.add_argument("--output", required=True, help="folder for results and metrics.json")
    parser.add_argument("--backend", default=None, choices=("pycocotools", "faster_coco_eval"),
                        help="COCO evaluator (default: the config's data.val.coco_backend)")
    parser.add_argument("--save-predictions", action="store_true",
                        help="sem_seg: write each image's class map to DIR/predictions/")
    parser.add_argument("--confusion-matrix", action="store_true",
                        help="also DIR/confusion_matrix.csv and .png; detection: "
                             "mmdetection's confusion_matrix.py (detections scoring "
                             "--score-thr or more, matched at IoU 0.5); sem_seg: of pixels")
    parser.add_argument("--error-analysis", action="store_true",
                        help="detection: also DIR/error_analysis/ (mmdetection's "
                             "coco_error_analysis.py: PR curves of the box and mask errors)")
    parser.add_argument("--score-thr", type=float, default=None,
                        help="detection --confusion-matrix: the detections counted (default "
                             f"{CONFUSION_SCORE_THR})")
    return parser.parse_intermixed_args(argv)


def refuse_a_training_runs_folder(output: Path) -> None:
    """A training run's folder as --output: its metrics.json (the run's last evaluation)
    would be replaced by this one's."""
    if (output / "config.yaml").is_file() and any(
            (output / name).is_file() for name in (POINTER, "model_final.pth")):
        raise ConfigError(f"--output {output} is a training run's folder: its metrics.json "
                          f"would be replaced; give a folder of its own, e.g. --output "
                          f"{output / 'eval'}")


def same_weights(a: str, b: str) -> bool:
    """Two --weights naming one file: an export folder and its model.onnx are one."""
    def resolved(path: str) -> Path:
        p = Path(path).resolve()
        return p / "model.onnx" if p.is_dir() else p
    return a == b or resolved(a) == resolved(b)


def refuse_another_evaluations_folder(output: Path, weights: str, key: str = "weights") -> None:
    """--output holding the evaluation of other weights (or results file, `key`): its
    metrics.json would be replaced and its results files (coco_instances_results.json,
    predictions/) could be left beside this one's. Evaluating the same weights again
    replaces their evaluation."""
    try:
        metrics = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
        earlier_key = "weights" if "weights" in metrics else "results"
        earlier = metrics.get(earlier_key)
    except (OSError, ValueError, AttributeError):
        return  # no evaluation's metrics.json there
    if earlier is None:  # an older version's evaluation: its weights unrecorded
        raise ConfigError(f"--output {output} holds a metrics.json that names no weights (a "
                          f"training run's, or an older version's evaluation): it would be "
                          f"replaced and its results mixed with these; give another folder, or "
                          f"remove {output / 'metrics.json'}")
    if isinstance(earlier, str) and (key != earlier_key or not same_weights(earlier, weights)):
        what = f"other {key}" if key == earlier_key else earlier_key
        raise ConfigError(f"--output {output} holds the evaluation of {what} ({earlier}): "
                          f"its metrics.json would be replaced and its results mixed with "
                          f"these; give another folder, or remove {output / 'metrics.json'}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate; returns what metrics.json holds."""
    args = parse_args(argv)
    refuse_a_training_runs_folder(Path(args.output))
    key = "results" if args.results else "weights"
    refuse_another_evaluations_folder(Path(args.output), getattr(args, key), key)
    earlier = earlier_analyses(Path(args.output))
    task = config_task(args.config, args.overrides)
    for flag, asked, tasks in (("--confusion-matrix", args.confusion_matrix,
                                ("detection", "sem_seg")),
                               ("--error-analysis", args.error_analysis, ("detection",))):
        if asked and task not in tasks:
            raise ConfigError(f"{flag} is for {' and '.join(tasks)}; {args.config} is a "
                              f"{task!r} config" + (" (its per-class IoU is in metrics.json)"
                                                    if task == "sem_seg" else ""))
    if args.score_thr is not None and not (args.confusion_matrix and task == "detection"):
        # (a user may read it as the threshold of the AP, which scores every detection)
        raise ConfigError("--score-thr sets which detections a detection --confusion-matrix "
                          "counts, and this evaluation makes none: the AP and the other "
                          "metrics score every detection the model returns (its own threshold "
                          "is model.roi_heads.score_thresh)")
    if args.score_thr is None:
        args.score_thr = CONFUSION_SCORE_THR
    if not 0 <= args.score_thr <= 1:
        raise ConfigError(f"--score-thr is a score, 0..1, got {args.score_thr}")
    if args.results:
        def scored() -> dict[str, Any]:
            metrics = score_results(args, task)
            write_analyses(args, Path(args.results))
            remove_what_this_evaluation_did_not_make(Path(args.output), earlier)
            return metrics

        init_distributed("cpu")  # (under torchrun: one process scores, the others wait)
        setup_logging(None)
        try:
            with exclusive_tool_folder(writable_folder(args.output, "--output"), TOOL):
                return done_by_the_main_process(scored, "score the results")
        finally:
            cleanup()
    evaluate_checkpoint = getattr(task_module(task), "evaluate_checkpoint", None)
    if evaluate_checkpoint is None:
        raise ConfigError(f"tools/eval.py has no evaluation of {task!r} models ({args.config})")
    options = {"backend": args.backend}
    if args.save_predictions:
        if task != "sem_seg":
            raise ConfigError(f"--save-predictions writes sem_seg class maps; {args.config} is "
                              f"a {task!r} config" + (" (its detections are in the results file)"
                                                      if task == "detection" else ""))
        options["save_predictions"] = True
    if task == "sem_seg" and args.confusion_matrix:
        options["confusion"] = True
    # the config's train.device (auto: a GPU when there is one; train.device=cpu forces the CPU)
    cfg = load_task_config(args.config, args.overrides)[1]
    check_num_workers(cfg)
    device = init_distributed(cfg.train.device, collective_timeout_s(cfg))
    setup_logging(None)
    try:
        # the main process writes the results: checked before the inference, on every process
        done_everywhere(lambda: writable_folder(args.output, "--output")
                        if is_main_process() else None, "write to --output")
        with exclusive_tool_folder(args.output, TOOL):
            metrics = evaluate_checkpoint(args.config, args.weights, Path(args.output),
                                          args.overrides, device, **options)
            if is_main_process():
                if (args.confusion_matrix or args.error_analysis) and task == "detection":
                    from resnet_detect.detection.evaluation import RESULTS_FILE
                    write_analyses(args, Path(args.output) / RESULTS_FILE)
                remove_what_this_evaluation_did_not_make(Path(args.output), earlier)
        return metrics
    finally:
        cleanup()


def score_results(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """--results: a detection results file scored against the config's val file."""
    if task != "detection":
        raise ConfigError(f"--results scores COCO detection results; {args.config} is a "
                          f"{task!r} config: give --weights")
    if args.save_predictions:
        raise ConfigError("--save-predictions writes a model's predictions: give --weights")
    from resnet_detect.detection.score_results import score_results_file
    return score_results_file(args.config, args.results, Path(args.output), args.overrides,
                              backend=args.backend)


def earlier_analyses(output: Path) -> dict[str, dict[Path, tuple[int, int]]]:
    """The analyses of an earlier evaluation in `output` (one whose metrics.json is there), by
    name, with their files' versions; links are the user's, not taken."""
    if not (output / "metrics.json").is_file():  # (files of these names that are the user's)
        return {}
    from resnet_detect.detection.error_analysis import FOLDER
    from resnet_detect.segmentation.training import PREDICTIONS
    return {name: file_versions(output / name) for name in (CSV_FILE, PNG_FILE, FOLDER,
                                                             PREDICTIONS)
            if (output / name).exists() and not (output / name).is_symlink()}


def remove_what_this_evaluation_did_not_make(
        output: Path, earlier: dict[str, dict[Path, tuple[int, int]]]) -> None:
    """The earlier evaluation's analyses that this one did not write again (not asked for,
    or asked and not made: a val file without annotations, say): left, they lay beside this
    evaluation's metrics as if of its weights (the same weights file, retrained or exported
    again, is evaluated into its folder again)."""
    stale = {}  # name: its files this evaluation did not write again (a folder's: some)
    for name, versions in earlier.items():
        now = file_versions(output / name)
        stale[name] = [file for file, version in versions.items() if now.get(file) == version]
    for name, files in stale.items():
        for file in files:
            file.unlink()
        if (output / name).is_dir():  # (its folders left empty: error_analysis/segm, say)
            for folder in sorted((output / name).rglob("*"), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            if not any((output / name).iterdir()):
                (output / name).rmdir()
    named = [name if not (output / name).exists() else f"{len(files)} files of {name}"
             for name, files in stale.items() if files]
    if named:
        print(f"removed the earlier evaluation's {', '.join(named)} from {output}: this "
              f"evaluation did not make them", flush=True)


def write_analyses(args: argparse.Namespace, results_file: Path) -> None:
    """--confusion-matrix and --error-analysis of `results_file` against the config's val
    file, where it has annotations and every result a box."""
    from resnet_detect.detection.config import load_config
    from resnet_detect.detection.data.splits import classes_subset
    from resnet_detect.engine.data import read_coco_json
    if not (args.confusion_matrix or args.error_analysis):
        return
    cfg = load_config(args.config, args.overrides)
    ann_file = cfg.data.val.ann_file
    gt = read_coco_json(ann_file, annotations_optional=True)
    results = json.loads(results_file.read_text(encoding="utf-8"))
    gt, results = classes_subset(cfg, gt, ann_file, results)  # data.classes' alone
    boxless = sum("bbox" not in r for r in results)
    for flag, asked, why, nothing, write in (
            ("--confusion-matrix", args.confusion_matrix, "it sets boxes against the objects'",
             "no matrix", write_confusion),
            ("--error-analysis", args.error_analysis, "it analyses the boxes, or every "
             "result's mask", "no analysis", write_errors)):
        if not asked:
            continue
        if not gt["annotations"]:
            print(f"{flag}: {ann_file} has no annotations: {nothing}", flush=True)
        elif boxless and not (write is write_errors and analysed_types(results)):
            print(f"{flag}: {boxless} of {len(results)} results have no bbox ({why}): "
                  f"{nothing}", flush=True)
        else:
            write(args, cfg, gt, results, results_file)


def write_confusion(args: argparse.Namespace, cfg: Any, gt: dict[str, Any],
                    results: list[dict], results_file: Path) -> None:
    """--confusion-matrix: the matrix of `results` against `gt`."""
    from resnet_detect.detection.confusion import (confusion_matrix, most_confused,
                                                   write_confusion_matrix)
    matrix, names = confusion_matrix(gt, results, score_thr=args.score_thr)
    written = write_confusion_matrix(matrix, names, Path(args.output))
    print(f"confusion matrix (detections scoring {args.score_thr} or more, IoU 0.5): "
          f"{', '.join(map(str, written))}" + "".join(f"\n{line}" for line in
                                                    most_confused(matrix, names)), flush=True)


def analysed_types(results: list[dict]) -> list[str]:
    """What --error-analysis analyses of `results`: "bbox" where every result has a box,
    "segm" where every one has a mask (no result: no mask, as the scoring reads it)."""
    return [iou_type for iou_type, key in (("bbox", "bbox"), ("segm", "segmentation"))
            if all(key in r for r in results) and (iou_type == "bbox" or results)]


def write_errors(args: argparse.Namespace, cfg: Any, gt: dict[str, Any], results: list[dict],
                 results_file: Path) -> None:
    """--error-analysis: the error analysis of `results`' boxes and, where every result has
    one, masks against `gt`."""
    from resnet_detect.detection.error_analysis import (FOLDER, analyze, overall_table,
                                                        write_error_analysis)
    from resnet_detect.detection.federated import is_federated
    from resnet_detect.detection.score_results import rle_masks
    from resnet_detect.detection.training import scored_detections
    from resnet_detect.engine.data import image_sizes
    # the detections per image and category the scoring counts: C50 and C75 are its AP50, AP75
    max_dets = scored_detections(cfg)
    for iou_type in analysed_types(results):
        what = "box" if iou_type == "bbox" else "mask"
        scored = results if iou_type == "bbox" else rle_masks(
            results, image_sizes(gt), results_file)
        analysis = analyze(gt, scored, iou_type=iou_type, max_dets=max_dets)
        written = write_error_analysis(analysis, Path(args.output))
        rules = (" by COCO's rules, not LVIS's: C75 and C50 are not the LVIS AP75 and AP50"
                 if is_federated(gt) else "")
        print(f"{what} error analysis (AP of each curve, overall{rules}; {len(written)} files "
              f"in {Path(args.output) / FOLDER / iou_type}):\n{overall_table(analysis)}",
              flush=True)


if __name__ == "__main__":
    run_tool(main)
