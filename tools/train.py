"""Train a detector (Faster R-CNN, Mask R-CNN) or a semantic segmenter from a config.

Usage:
  python tools/train.py CONFIG [key=value ...] [--resume]

The config picks the task: segmentation configs say `task: sem_seg`, everything else is a
detection config (configs/detection/base_faster_rcnn.yaml lists every key). Usual keys:
  data.train.ann_file=PATH data.train.img_dir=DIR data.val.ann_file=PATH data.val.img_dir=DIR
  train.max_iter=N train.batch_size=N (images per step over all processes)
  train.output_dir=DIR
The number of classes is read from the training JSON unless model.num_classes is set.

One machine, N processes (GPUs, or CPU processes with gloo):
  torchrun --nproc_per_node=N tools/train.py CONFIG [key=value ...]
Several machines (run on each; node_rank 0..nnodes-1):
  torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
      --rdzv_id=JOB --rdzv_endpoint=HOST:PORT tools/train.py CONFIG [key=value ...]
  With --resume, train.output_dir should be on storage shared by all nodes.

Ends with OUTPUT_DIR/model_final.pth (weights + provenance) and prints the final metrics on
the validation split: `box AP = xx.x` (detection; plus `mask AP = xx.x` with model.mask_on)
or `mIoU = xx.x` (segmentation).
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
from omegaconf import DictConfig
from torch import nn

from engine import (Checkpointer, PeriodicCheckpointer, PeriodicEval, ProgressLogger, ScalarWriter,
                    Trainer, cleanup, init_distributed, is_main_process, load_config, log_metrics,
                    parse_amp, per_process_batch_size, save_config, seed_everything, setup_logging,
                    wrap_ddp)
from engine.cli import config_argument_parser

logger = logging.getLogger("train")


def config_task(path: str, overrides: Sequence[str]) -> str:
    """The config's `task` ("sem_seg" for segmentation, "detection" otherwise)."""
    raw = load_config(path, [o for o in overrides if o.startswith("task=")])
    return str(raw.get("task") or "detection")


def train_sem_seg(cfg: DictConfig, device: torch.device, *, resume: bool) -> dict[str, Any]:
    """Train a semantic segmenter; returns {"model", "metrics"}."""
    import backbones  # noqa: PLC0415
    import segmentation  # noqa: PLC0415
    from detection.training import build_optimizer, build_scheduler  # noqa: PLC0415
    from segmentation.data import build_dataset, build_test_loader, build_train_loader  # noqa
    from segmentation.inference import tta_from_config  # noqa: PLC0415

    t = cfg.train
    output_dir = Path(t.output_dir)
    setup_logging(output_dir)
    batch_size = per_process_batch_size(t.batch_size, "train.batch_size")
    class_names = build_dataset(cfg, "train").class_names  # checks the data first
    val_loader = build_test_loader(cfg) if cfg.data.val.img_dir else None
    cfg.model.num_classes = len(class_names)
    if is_main_process():
        save_config(cfg, output_dir / "config.yaml")
    seed_everything(t.seed)
    model = segmentation.build_model(cfg).to(device)
    ddp_model = wrap_ddp(model, device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)

    def step_fn(net: nn.Module, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [s["image"].to(device, non_blocking=True) for s in batch]
        targets = [{"gt_sem_seg": s["gt_sem_seg"].to(device)} for s in batch]
        return net(images, targets)

    writer = ScalarWriter(output_dir / "tensorboard")
    trainer = Trainer(model=ddp_model, optimizer=optimizer, scheduler=scheduler, step_fn=step_fn,
                      max_iter=t.max_iter,
                      amp=parse_amp(t.amp),
                      clip_grad_norm=t.clip_grad_norm if t.clip_grad_norm else None)
    checkpointer = Checkpointer(output_dir, model=model, optimizer=optimizer,
                                scheduler=scheduler, scaler=trainer.scaler, max_to_keep=2)
    state = checkpointer.resume() if resume else None
    start_iter = state["iteration"] if state is not None else 0
    hooks: list[Any] = [ProgressLogger(t.log_period, writer, logger),
                        PeriodicCheckpointer(checkpointer, t.checkpoint_period)]
    eval_hook = None
    if val_loader is not None:
        evaluator = segmentation.SemSegEvaluator(len(class_names), class_names,
                                                 cfg.model.ignore_index)
        eval_hook = PeriodicEval(
            t.eval_period,
            lambda: segmentation.evaluate_model(model, val_loader, evaluator,
                                                tta=tta_from_config(cfg))["sem_seg"],
            on_result=lambda m, it: log_metrics(
                {k: v for k, v in m.items() if isinstance(v, float)}, it, writer,
                prefix="sem_seg", logger=logger))
        hooks.append(eval_hook)
    trainer.register_hooks(*hooks)
    train_loader = build_train_loader(cfg, start=start_iter * batch_size)
    trainer.train(iter(train_loader), start_iter=start_iter)
    writer.close()
    if is_main_process():
        backbones.save_checkpoint(output_dir / "model_final.pth", model.state_dict(),
                                  segmentation.provenance_from_config(cfg, class_names),
                                  iteration=t.max_iter)
        logger.info("wrote %s", output_dir / "model_final.pth")
    return {"model": model, "metrics": eval_hook.last_result if eval_hook else {}}


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.1f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return config_argument_parser(__doc__, resume=True).parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the training; returns {"model", "metrics", "task"}."""
    args = parse_args(argv)
    task = config_task(args.config, args.overrides)
    if task == "sem_seg":
        import segmentation  # noqa: PLC0415
        cfg = segmentation.load_config(args.config, args.overrides)
    else:
        from detection.config import load_config as load_detection_config  # noqa: PLC0415
        cfg = load_detection_config(args.config, args.overrides)
    device = init_distributed("auto")
    try:
        if task == "sem_seg":
            result = train_sem_seg(cfg, device, resume=args.resume)
            line = f"mIoU = {_fmt(result['metrics'].get('mIoU'))}"
        else:
            from detection.training import train  # noqa: PLC0415
            result = train(cfg, device, resume=args.resume)
            line = f"box AP = {_fmt(result['metrics'].get('AP'))}"
            if result["metrics"]:
                line += (f"  AP50 = {_fmt(result['metrics'].get('AP50'))}  "
                         f"AP75 = {_fmt(result['metrics'].get('AP75'))}")
            if result.get("segm_metrics"):
                line += f"  mask AP = {_fmt(result['segm_metrics'].get('AP'))}"
        if is_main_process():
            print(line, flush=True)
        return {**result, "task": task}
    finally:
        cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
