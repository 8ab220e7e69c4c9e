"""Pretrain a ResNet classifier on an ImageFolder tree (root/train/<class>/*, root/val/<class>/*).

Usage:
  python tools/pretrain.py CONFIG [key=value ...] [--resume]

One machine, N processes (GPUs, or CPU processes with gloo):
  torchrun --nproc_per_node=N tools/pretrain.py CONFIG [key=value ...]

Several machines (run on each; node_rank 0..nnodes-1; HOST:PORT reachable from all of them):
  torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
      --rdzv_id=JOB --rdzv_endpoint=HOST:PORT tools/pretrain.py CONFIG [key=value ...]
  With --resume, train.output_dir should be on storage shared by all nodes.

`solver.batch_size` is the number of images per optimizer step over all processes; each
process loads batch_size / world_size. Lengths (epochs, lr steps, warmup) are in epochs of
the training split; log/eval/checkpoint periods are in iterations. At the end the tool
writes OUTPUT_DIR/model_final.pth (the classifier) and OUTPUT_DIR/backbone_final.pth (the
backbone alone, loadable with `backbones.build(name, weights=PATH)`), both with provenance,
and prints `top1=..  top5=..` (percent) on the validation split.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

import backbones
from backbones.data import (ImageFolderDataset, build_train_loader, build_train_transform,
                            build_val_loader, build_val_transform, scan_image_folder)
from engine import (Checkpointer, OPTIMIZERS, PeriodicCheckpointer, PeriodicEval, ProgressLogger,
                    ScalarWriter, Trainer, all_gather_object, all_reduce_sum, broadcast_buffers,
                    build_lr_scheduler, build_optimizer, cleanup, get_rank, get_world_size,
                    init_distributed, is_main_process, load_config, log_metrics, parse_amp,
                    per_process_batch_size, save_config, seed_everything, setup_logging, to_plain,
                    wrap_ddp)
from engine.cli import config_argument_parser

logger = logging.getLogger("pretrain")

DEFAULTS: dict[str, Any] = {
    "model": {"name": "resnet50", "options": {}, "channels_last": False},
    "data": {"root": "???", "train_split": "train", "val_split": "val", "image_size": 224,
             "val_resize": 256, "scale": [0.08, 1.0], "hflip": True, "num_workers": 4,
             "pixel_mean": list(backbones.PIXEL_MEAN), "pixel_std": list(backbones.PIXEL_STD)},
    "solver": {"optimizer": "sgd", "batch_size": 256, "epochs": 90.0, "base_lr": 0.1,
               "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4, "label_smoothing": 0.0,
               "decay": "step", "steps": [30, 60, 80], "gamma": 0.1, "final_lr_factor": 0.0,
               "warmup_epochs": 0.0, "warmup_factor": 0.1, "clip_grad_norm": None},
    "train": {"output_dir": "output/pretrain", "device": "auto", "amp": "bf16", "seed": 0,
              "log_period": 20, "eval_period": 0, "checkpoint_period": 5000, "max_to_keep": 2},
}
OPEN_KEYS = ("model.options",)


def build_datasets_from_config(cfg: DictConfig) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """Scan both splits first, so a missing folder fails before any model is built."""
    d = cfg.data
    train_samples, class_names = scan_image_folder(f"{d.root}/{d.train_split}")
    val_samples, _ = scan_image_folder(f"{d.root}/{d.val_split}", class_names)
    norm = {"pixel_mean": list(d.pixel_mean), "pixel_std": list(d.pixel_std)}
    train = ImageFolderDataset(samples=train_samples, class_names=class_names, train=True,
                               transform=build_train_transform(image_size=d.image_size,
                                                               scale=list(d.scale),
                                                               hflip=d.hflip, **norm))
    val = ImageFolderDataset(samples=val_samples, class_names=class_names, train=False,
                             transform=build_val_transform(image_size=d.image_size,
                                                           resize=d.val_resize, **norm))
    return train, val


def build_model_from_config(cfg: DictConfig, num_classes: int,
                            device: torch.device) -> backbones.Classifier:
    """The classifier on `device` (channels_last when asked), seeded by train.seed."""
    seed_everything(cfg.train.seed)
    model = backbones.build_classifier(cfg.model.name, num_classes, **to_plain(cfg.model.options))
    model.to(device)
    if cfg.model.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def build_optimizer_from_config(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    s = cfg.solver
    if s.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown solver.optimizer {s.optimizer!r}; "
                         f"valid: {', '.join(OPTIMIZERS)}")
    return build_optimizer(model, name=s.optimizer, lr=s.base_lr, weight_decay=s.weight_decay,
                           momentum=s.momentum, nesterov=s.nesterov)


def total_iterations(cfg: DictConfig, iters_per_epoch: int) -> int:
    return max(round(cfg.solver.epochs * iters_per_epoch), 1)


def build_scheduler_from_config(cfg: DictConfig, optimizer: torch.optim.Optimizer,
                                iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The solver's epoch-based lengths turned into an iteration schedule."""
    s = cfg.solver
    max_iter = total_iterations(cfg, iters_per_epoch)
    steps = [round(e * iters_per_epoch) for e in s.steps] if s.decay == "step" else []
    try:
        return build_lr_scheduler(optimizer, max_iter=max_iter, decay=s.decay, steps=steps,
                                  gamma=s.gamma, final_factor=s.final_lr_factor,
                                  warmup_iters=round(s.warmup_epochs * iters_per_epoch),
                                  warmup_factor=s.warmup_factor)
    except ValueError as e:
        raise ValueError(f"invalid solver config (epochs={s.epochs}, steps={list(s.steps)} "
                         f"epochs, {iters_per_epoch} iterations per epoch): {e}") from None


class UnreadableCounter:
    """Passes batches through and remembers the unreadable images they replaced."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.paths: list[str] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            self.paths.extend(batch["unreadable"])
            yield batch

    def report(self, split: str) -> int:
        """Log the count over all processes (collective); returns it."""
        count = int(all_reduce_sum({"n": len(self.paths)})["n"])
        if count:
            distinct = sorted({p for paths in all_gather_object(self.paths) for p in paths})
            logger.warning("%s: skipped %d unreadable image reads (%d files): %s", split, count,
                           len(distinct), ", ".join(distinct[:20]))
        return count


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, device: torch.device,
             amp_dtype: torch.dtype | None, channels_last: bool) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) over every process's shard; unreadable images excluded."""
    broadcast_buffers(model)
    model.eval()
    sums = {"top1": 0.0, "top5": 0.0, "count": 0.0}
    counter = UnreadableCounter(loader)
    for batch in counter:
        images = batch["images"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch["labels"].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (N, 5)
        hit = (top == labels[:, None]) & (labels[:, None] >= 0)
        sums["top1"] += hit[:, 0].sum().item()
        sums["top5"] += hit.any(dim=1).sum().item()
        sums["count"] += (labels >= 0).sum().item()
    counter.report("val")
    total = all_reduce_sum(sums)
    n = max(total["count"], 1.0)
    return {"top1": 100.0 * total["top1"] / n, "top5": 100.0 * total["top5"] / n}


def save_final(cfg: DictConfig, model: backbones.Classifier, class_names: list[str],
               iteration: int) -> None:
    """OUTPUT_DIR/model_final.pth (classifier) and backbone_final.pth, with provenance."""
    output_dir = cfg.train.output_dir
    provenance = backbones.make_provenance(
        cfg.model.name, to_plain(cfg.model.options), class_names=class_names,
        config=to_plain(cfg), pixel_mean=tuple(cfg.data.pixel_mean),
        pixel_std=tuple(cfg.data.pixel_std))
    backbones.save_checkpoint(f"{output_dir}/model_final.pth", model.state_dict(), provenance,
                              iteration=iteration)
    backbones.save_checkpoint(f"{output_dir}/backbone_final.pth", model.backbone.state_dict(),
                              provenance)
    logger.info("wrote %s/model_final.pth and %s/backbone_final.pth", output_dir, output_dir)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return config_argument_parser(__doc__, resume=True).parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the pretraining; returns {"model": the classifier, "metrics": final top1/top5}."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides, defaults=DEFAULTS, open_keys=OPEN_KEYS)
    device = init_distributed(cfg.train.device)
    try:
        return train(cfg, device, resume=args.resume)
    finally:
        cleanup()


def train(cfg: DictConfig, device: torch.device, *, resume: bool) -> dict[str, Any]:
    """Build everything from `cfg`, train (resuming if asked), evaluate, save the outputs."""
    output_dir, world_size = cfg.train.output_dir, get_world_size()
    setup_logging(output_dir)
    batch_size = per_process_batch_size(cfg.solver.batch_size, "solver.batch_size")
    train_set, val_set = build_datasets_from_config(cfg)
    iters_per_epoch = len(train_set) // cfg.solver.batch_size
    if iters_per_epoch == 0:
        raise ValueError(f"solver.batch_size {cfg.solver.batch_size} exceeds the "
                         f"{len(train_set)} training images")
    if is_main_process():
        save_config(cfg, f"{output_dir}/config.yaml")
    logger.info("%d train / %d val images, %d classes, %d processes x %d images per step",
                len(train_set), len(val_set), len(train_set.class_names), world_size, batch_size)

    model = build_model_from_config(cfg, len(train_set.class_names), device)
    seed_everything(cfg.train.seed + get_rank())  # distinct stochastic depth per process
    ddp_model = wrap_ddp(model, device)
    optimizer = build_optimizer_from_config(cfg, model)
    scheduler = build_scheduler_from_config(cfg, optimizer, iters_per_epoch)
    max_iter = total_iterations(cfg, iters_per_epoch)
    amp = parse_amp(cfg.train.amp)
    channels_last = cfg.model.channels_last

    def step_fn(net: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = batch["images"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch["labels"].to(device, non_blocking=True)
        logits = net(images)
        return {"loss_cls": F.cross_entropy(logits, labels,
                                            label_smoothing=cfg.solver.label_smoothing)}

    val_loader = build_val_loader(val_set, batch_size=batch_size,
                                  num_workers=cfg.data.num_workers,
                                  pin_memory=device.type == "cuda")
    writer = ScalarWriter(f"{output_dir}/tensorboard")
    trainer = Trainer(model=ddp_model, optimizer=optimizer, scheduler=scheduler, step_fn=step_fn,
                      max_iter=max_iter, amp=amp, clip_grad_norm=cfg.solver.clip_grad_norm)
    amp_dtype = trainer.amp_dtype
    checkpointer = Checkpointer(output_dir, model=model, optimizer=optimizer,
                                scheduler=scheduler, scaler=trainer.scaler,
                                max_to_keep=cfg.train.max_to_keep)
    start_iter, consumed = 0, 0
    state = checkpointer.resume() if resume else None
    if state is not None:
        start_iter = state["iteration"]
        consumed = state["extra"].get("samples_per_process", start_iter * batch_size)
    eval_hook = PeriodicEval(
        cfg.train.eval_period,
        lambda: evaluate(model, val_loader, device=device, amp_dtype=amp_dtype,
                         channels_last=channels_last),
        on_result=lambda metrics, it: log_metrics(metrics, it, writer))
    trainer.register_hooks(
        ProgressLogger(cfg.train.log_period, writer, logger),
        PeriodicCheckpointer(checkpointer, cfg.train.checkpoint_period,
                             extra_fn=lambda it: {"samples_per_process": it * batch_size}),
        eval_hook)
    train_loader = UnreadableCounter(build_train_loader(
        train_set, batch_size=batch_size, num_workers=cfg.data.num_workers,
        seed=cfg.train.seed, start=consumed, pin_memory=device.type == "cuda"))
    logger.info("training %s for %d iterations (%d per epoch) from iteration %d",
                cfg.model.name, max_iter, iters_per_epoch, start_iter)
    trainer.train(iter(train_loader), start_iter=start_iter)
    train_loader.report("train")
    writer.close()

    metrics = eval_hook.last_result
    if is_main_process():
        save_final(cfg, model, train_set.class_names, max_iter)
        print(f"top1={metrics['top1']:.2f}  top5={metrics['top5']:.2f}", flush=True)
    return {"model": model, "metrics": metrics}


if __name__ == "__main__":
    main(sys.argv[1:])
