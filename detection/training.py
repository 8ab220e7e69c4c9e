"""Train a Faster / Mask R-CNN from a config: COCO data in, OUTPUT_DIR/model_final.pth out.

A batch is a list of N samples (``detection.data.DetectionDataset``); the model takes
N images (3, H_i, W_i) and per image gt_boxes (M, 4) / gt_classes (M,) (and gt_masks
(M, H_i, W_i) with ``model.mask_on``, from the annotations' polygons or RLE).
``train.batch_size`` counts images per step over all processes; each process loads
batch_size / world_size.
Everything that can fail on the data (JSON structure, unknown ids, missing image files)
fails in `build_datasets` before a model is built.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

import backbones
import engine
from engine import (Checkpointer, OPTIMIZERS, PeriodicCheckpointer, PeriodicEval, ProgressLogger,
                    ScalarWriter, Trainer, all_reduce_sum, build_lr_scheduler, get_rank,
                    get_world_size, is_main_process, parse_amp, per_process_batch_size, save_config,
                    seed_everything, setup_logging, to_plain, wrap_ddp)

from .build import build_model
from .config import test_resize
from .data import (CategoryMapping, DetectionDataset, build_test_loader, build_train_loader,
                   build_transforms, load_coco_json)
from .evaluation import COCOEvaluator
from .rcnn import FasterRCNN

logger = logging.getLogger("train")


@dataclass
class Datasets:
    """The training and validation sets and the category mapping they share."""

    train: DetectionDataset
    val: DetectionDataset | None
    mapping: CategoryMapping


def _split_paths(cfg: DictConfig, split: str) -> tuple[str, str] | None:
    s = cfg.data[split]
    if not s.ann_file and not s.img_dir:
        return None
    if not s.ann_file or not s.img_dir:
        raise ValueError(f"data.{split} needs both ann_file and img_dir, got ann_file="
                         f"{s.ann_file!r}, img_dir={s.img_dir!r}")
    return str(s.ann_file), str(s.img_dir)


def build_val_dataset(cfg: DictConfig) -> tuple[DetectionDataset, CategoryMapping, str] | None:
    """The validation set at test-time size, its category mapping and its JSON path."""
    paths = _split_paths(cfg, "val")
    if paths is None:
        return None
    records, mapping, _ = load_coco_json(*paths)
    min_size, max_size = test_resize(cfg)
    transform = build_transforms(min_size=min_size, max_size=max_size, flip_prob=0.0)
    return DetectionDataset(records, transform=transform), mapping, paths[0]


def build_datasets(cfg: DictConfig) -> Datasets:
    """Load and check both splits (errors name the file and entry) before any training.

    Raises:
        ValueError: a split is not set, or the val categories differ from the training ones.
    """
    paths = _split_paths(cfg, "train")
    if paths is None:
        raise ValueError("data.train.ann_file and data.train.img_dir must be set")
    d = cfg.data.train
    mask_on = bool(cfg.model.mask_on)
    records, mapping, _ = load_coco_json(*paths, filter_empty=d.filter_empty,
                                         keep_segmentation=mask_on)
    if not records:
        raise ValueError(f"{paths[0]}: no training images left (filter_empty={d.filter_empty})")
    min_size = d.min_size if isinstance(d.min_size, int) else list(d.min_size)
    train = DetectionDataset(records, with_masks=mask_on, transform=build_transforms(
        min_size=min_size, max_size=d.max_size, flip_prob=d.hflip_prob))
    val = build_val_dataset(cfg)
    if val is not None and val[1].dataset_ids != mapping.dataset_ids:
        raise ValueError(f"{cfg.data.val.ann_file}: categories {list(val[1].dataset_ids)} differ "
                         f"from the training file's {list(mapping.dataset_ids)} ({paths[0]})")
    return Datasets(train=train, val=val[0] if val else None, mapping=mapping)


def resolve_num_classes(cfg: DictConfig, mapping: CategoryMapping) -> None:
    """Set model.num_classes from the training JSON, or check the configured value."""
    configured = cfg.model.num_classes
    if configured is None:
        cfg.model.num_classes = mapping.num_classes
    elif configured != mapping.num_classes:
        raise ValueError(f"model.num_classes is {configured} but {cfg.data.train.ann_file} has "
                         f"{mapping.num_classes} categories; leave it null to read it from there")


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``train.optimizer`` (SGD or AdamW) over the trainable parameters."""
    t = cfg.train
    if t.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown train.optimizer {t.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    return engine.build_optimizer(model, name=t.optimizer, lr=t.base_lr,
                                  weight_decay=t.weight_decay, momentum=t.momentum)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    t = cfg.train
    try:
        return build_lr_scheduler(optimizer, max_iter=t.max_iter, decay=t.lr_decay,
                                  steps=list(t.lr_steps) if t.lr_decay == "step" else [],
                                  gamma=t.gamma, warmup_iters=t.warmup_iters,
                                  warmup_factor=t.warmup_factor)
    except ValueError as e:
        raise ValueError(f"invalid train config (max_iter={t.max_iter}, lr_steps="
                         f"{list(t.lr_steps)}): {e}") from None


def iou_types(model: FasterRCNN) -> tuple[str, ...]:
    """What COCO evaluation scores for `model`: ("bbox",), plus "segm" for Mask R-CNN."""
    return ("bbox", "segm") if model.mask_on else ("bbox",)


@torch.no_grad()
def evaluate(model: FasterRCNN, loader: DataLoader, evaluator: COCOEvaluator) -> dict[str, Any]:
    """Box metrics of `model` over `loader` (every process its share); percent values."""
    return evaluate_all(model, loader, evaluator)["bbox"]


@torch.no_grad()
def evaluate_all(model: FasterRCNN, loader: DataLoader, evaluator: COCOEvaluator
                 ) -> dict[str, dict[str, Any]]:
    """{iou_type: metrics} of `model` over `loader` for the evaluator's iou_types ("bbox",
    "segm"); every process scores its share, values in percent."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    device = model.pixel_mean.device
    try:
        for batch in loader:
            if not batch:
                continue
            outputs = model([s["image"].to(device) for s in batch],
                            output_sizes=[(s["height"], s["width"]) for s in batch])
            evaluator.process(batch, outputs)
    finally:
        model.train(was_training)
    return evaluator.evaluate()


def make_provenance(cfg: DictConfig, mapping: CategoryMapping) -> dict[str, Any]:
    """What model_final.pth records: arch, backbone options, pixel mean/std, class names,
    dataset category ids and the resolved config."""
    plain = to_plain(cfg)
    bcfg = plain["model"]["backbone"]
    options = {k: v for k, v in bcfg.items() if k != "weights"}
    meta = "mask_rcnn_" if plain["model"]["mask_on"] else "faster_rcnn_"
    arch = meta + bcfg["name"] + ("_fpn" if plain["model"]["fpn"]["enabled"] else "")
    provenance = backbones.make_provenance(
        arch, options, class_names=list(mapping.names), config=plain,
        pixel_mean=tuple(plain["model"]["pixel_mean"]),
        pixel_std=tuple(plain["model"]["pixel_std"]))
    provenance["category_ids"] = list(mapping.dataset_ids)
    return provenance


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def train(cfg: DictConfig, device: torch.device, *, resume: bool = False) -> dict[str, Any]:
    """Build everything from `cfg`, train (resuming if asked), evaluate, save model_final.pth.

    Args:
        cfg: a detection config (``detection.load_config``).
        device: this process's device (from ``engine.init_distributed``).
        resume: continue from OUTPUT_DIR/last_checkpoint when there is one.

    Returns:
        {"model": the detector, "metrics": final box metrics (empty without a val split),
        "segm_metrics": final mask metrics (empty without masks or a val split),
        "iteration": steps done}.
    """
    t = cfg.train
    output_dir, world_size = Path(t.output_dir), get_world_size()
    setup_logging(output_dir)
    batch_size = per_process_batch_size(t.batch_size, "train.batch_size")
    data = build_datasets(cfg)
    resolve_num_classes(cfg, data.mapping)
    if is_main_process():
        save_config(cfg, output_dir / "config.yaml")
    logger.info("%d train / %s val images, %d classes %s, %d processes x %d images per step",
                len(data.train), len(data.val) if data.val else "no", data.mapping.num_classes,
                list(data.mapping.names), world_size, batch_size)

    seed_everything(t.seed)
    model = build_model(cfg).to(device)
    ddp_model = wrap_ddp(model, device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    amp = parse_amp(t.amp)
    skipped = {"n": 0}

    def step_fn(net: nn.Module, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        skipped["n"] += batch_size - len(batch)
        if not batch:  # every image unreadable: a zero step keeps all processes in step
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return {"loss_cls": zero}
        images = [s["image"].to(device, non_blocking=True) for s in batch]
        targets = [{"gt_boxes": s["gt_boxes"].to(device), "gt_classes": s["gt_classes"].to(device)}
                   for s in batch]
        if model.mask_on:
            for target, s in zip(targets, batch):
                target["gt_masks"] = s["gt_masks"].to(device, non_blocking=True)
        return net(images, targets)

    writer = ScalarWriter(output_dir / "tensorboard")
    trainer = Trainer(model=ddp_model, optimizer=optimizer, scheduler=scheduler, step_fn=step_fn,
                      max_iter=t.max_iter, amp=amp,
                      clip_grad_norm=t.clip_grad_norm if t.clip_grad_norm else None)
    checkpointer = Checkpointer(output_dir, model=model, optimizer=optimizer,
                                scheduler=scheduler, scaler=trainer.scaler, max_to_keep=2)
    start_iter = 0
    state = checkpointer.resume() if resume else None
    if state is not None:
        start_iter = state["iteration"]
    seed_everything(t.seed + get_rank() + start_iter)

    hooks: list[Any] = [ProgressLogger(t.log_period, writer, logger),
                        PeriodicCheckpointer(checkpointer, t.checkpoint_period)]
    eval_hook = None
    if data.val is not None:
        val_loader = build_test_loader(data.val, num_workers=min(cfg.data.num_workers, 1))
        evaluator = COCOEvaluator(cfg.data.val.ann_file, category_ids=data.mapping.dataset_ids,
                                  output_dir=output_dir / "inference", iou_types=iou_types(model))

        def log_all(metrics: dict[str, dict[str, Any]], iteration: int) -> None:
            for iou_type, values in metrics.items():  # one line and tensorboard group each
                scalars = _scalar_metrics(values)
                logger.info("eval @ iter %d, %s: %s", iteration, iou_type,
                            "  ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
                writer.add_scalars({f"{iou_type}/{k}": v for k, v in scalars.items()}, iteration)

        eval_hook = PeriodicEval(t.eval_period, lambda: evaluate_all(model, val_loader, evaluator),
                                 on_result=log_all)
        hooks.append(eval_hook)
    trainer.register_hooks(*hooks)
    train_loader = build_train_loader(data.train, batch_size=batch_size, seed=t.seed,
                                      num_workers=cfg.data.num_workers, start_batch=start_iter)
    logger.info("training for %d iterations from iteration %d", t.max_iter, start_iter)
    trainer.train(iter(train_loader), start_iter=start_iter)
    writer.close()
    total_skipped = int(all_reduce_sum({"n": skipped["n"]})["n"])
    if total_skipped:
        logger.warning("skipped %d unreadable image reads during training", total_skipped)

    metrics = eval_hook.last_result if eval_hook is not None else {}
    if is_main_process():
        backbones.save_checkpoint(output_dir / "model_final.pth", model.state_dict(),
                                  make_provenance(cfg, data.mapping), iteration=t.max_iter)
        logger.info("wrote %s", output_dir / "model_final.pth")
    return {"model": model, "metrics": metrics.get("bbox", {}),
            "segm_metrics": metrics.get("segm", {}), "iteration": trainer.iter}
