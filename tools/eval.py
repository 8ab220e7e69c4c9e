"""Evaluate trained weights on a config's validation split.

Usage:
  python tools/eval.py CONFIG --weights CKPT --output DIR [key=value ...]
      [--backend pycocotools|faster_coco_eval]
  torchrun --nproc_per_node=N tools/eval.py ...   (each process scores its share)

Detection (COCO box AP on data.val.ann_file / data.val.img_dir): prints the 12 standard
numbers and a per-category AP table; writes DIR/coco_instances_results.json (COCO results,
dataset category ids, RLE masks for Mask R-CNN) and DIR/metrics.json as {"bbox": {"AP",
"AP50", "AP75", "APs", "APm", "APl", "per_category": {name: AP}}} in percent (null where
undefined), with the same numbers for the masks under "segm" when the model has a mask head
(model.mask_on). Weights are this project's checkpoints or a torchvision
fasterrcnn_resnet50_fpn / maskrcnn_resnet50_fpn state dict (labels = COCO ids).

Segmentation (`task: sem_seg` configs): mIoU, pixel accuracy and per-class IoU in percent,
written to DIR/metrics.json as {"sem_seg": {...}}.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine import atomic_write_json, cleanup, init_distributed, is_main_process, setup_logging
from engine.cli import config_argument_parser
from engine.tasks import config_task

logger = logging.getLogger("eval")
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


def bbox_metrics_json(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics.json form of `evaluate_coco`'s result: percent, NaN -> null, no stats."""
    out = {k: metrics[k] for k in METRIC_KEYS}
    out["per_category"] = dict(metrics["per_category"])
    return _finite_or_none(out)


def evaluate_detection(config: str, weights: str, output: Path, overrides: Sequence[str],
                       backend: str, device: torch.device) -> dict[str, Any]:
    """COCO box (and mask) AP of `weights` on data.val; writes the results and metrics.json."""
    from detection.evaluation import COCOEvaluator  # noqa: PLC0415
    from detection.predictor import load_detector  # noqa: PLC0415
    from detection.training import build_val_dataset, evaluate_all, iou_types  # noqa: PLC0415
    from engine.data import build_test_loader  # noqa: PLC0415

    loaded = load_detector(config, weights=weights, overrides=overrides, device=device)
    val = build_val_dataset(loaded.cfg)
    if val is None:
        raise ValueError("data.val.ann_file and data.val.img_dir must be set to evaluate")
    dataset, mapping, ann_file = val
    known = set(mapping.dataset_ids)
    unknown = [c for c in loaded.category_ids if c not in known]
    if len(unknown) == len(loaded.category_ids):
        raise ValueError(f"none of the weights' category ids {loaded.category_ids[:10]} occur "
                         f"in {ann_file} (ids {list(mapping.dataset_ids)[:10]}...)")
    if unknown:
        logger.warning("%d of the model's category ids are not in %s: %s", len(unknown),
                       ann_file, unknown[:10])
    loader = build_test_loader(dataset, num_workers=min(loaded.cfg.data.num_workers, 1))
    evaluator = COCOEvaluator(ann_file, category_ids=loaded.category_ids, output_dir=output,
                              backend=backend, iou_types=iou_types(loaded.model))
    metrics = evaluate_all(loaded.model, loader, evaluator)
    result = {iou_type: bbox_metrics_json(m) for iou_type, m in metrics.items()}
    if is_main_process():
        atomic_write_json(result, output / "metrics.json")
        mask = f"  mask AP = {metrics['segm']['AP']:.1f}" if "segm" in metrics else ""
        print(f"box AP = {metrics['bbox']['AP']:.1f}{mask}  (results: "
              f"{output / 'coco_instances_results.json'}, metrics: {output / 'metrics.json'})",
              flush=True)
    return result


def evaluate_sem_seg(config: str, weights: str, output: Path, overrides: Sequence[str],
                     device: torch.device) -> dict[str, Any]:
    """mIoU of `weights` on data.val; writes metrics.json."""
    import segmentation  # noqa: PLC0415
    from segmentation.data import build_test_loader  # noqa: PLC0415
    from segmentation.inference import tta_from_config  # noqa: PLC0415

    predictor = segmentation.Predictor(config, weights=weights, overrides=overrides,
                                       device=device)
    cfg = segmentation.load_config(config, overrides)
    cfg.model.num_classes = predictor.model.num_classes
    if not cfg.data.class_names:
        cfg.data.class_names = list(predictor.class_names)
    loader = build_test_loader(cfg)
    evaluator = segmentation.SemSegEvaluator(predictor.model.num_classes, predictor.class_names,
                                             predictor.model.ignore_index)
    result = segmentation.evaluate_model(predictor.model, loader, evaluator,
                                         tta=tta_from_config(cfg), output_dir=output)
    result = _finite_or_none(result)
    if is_main_process():
        atomic_write_json(result, output / "metrics.json")
        m = result["sem_seg"]
        print(f"mIoU = {m['mIoU']:.1f}  pixel_acc = {m['pixel_acc']:.1f}", flush=True)
        for name, iou in m["per_class_iou"].items():
            print(f"  {name:<20} {'n/a' if iou is None else f'{iou:6.2f}'}")
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = config_argument_parser(__doc__)
    parser.add_argument("--weights", required=True, help="checkpoint to evaluate")
    parser.add_argument("--output", required=True, help="folder for results and metrics.json")
    parser.add_argument("--backend", default="pycocotools",
                        choices=("pycocotools", "faster_coco_eval"), help="COCO evaluator")
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate; returns what metrics.json holds."""
    args = parse_args(argv)
    task = config_task(args.config, args.overrides)
    output = Path(args.output)
    device = init_distributed("auto")
    setup_logging(None)
    try:
        if task == "sem_seg":
            return evaluate_sem_seg(args.config, args.weights, output, args.overrides, device)
        return evaluate_detection(args.config, args.weights, output, args.overrides,
                                  args.backend, device)
    finally:
        cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
