"""tools/eval.py for classifiers: top-1/top-5 of trained weights on a config's val split, as
timm's validate.py and torchvision's `train.py --test-only` give them."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from resnet_detect.engine import atomic_write_json, get_world_size, is_main_process, to_plain
from resnet_detect.engine.amp import amp_for_device, float32_default
from resnet_detect.engine.config import ConfigError, config_section
from resnet_detect.engine.data import CountedLoader, DatasetError, build_test_loader
from resnet_detect.engine.export import export_source, is_onnx
from resnet_detect.engine.files import nan_to_none
from resnet_detect.engine.task_api import LEFT_OUT
from resnet_detect.engine.tasks import load_task_config

from . import build_classifier
from .data import (ImageFolderDataset, build_val_transform, class_folders, collate_images,
                   scan_image_folder, warn_of_another_val_transform)
from .export import OnnxClassifier, crop_as_exported
from .weights import classifier_checkpoint

logger = logging.getLogger(__name__)
TASK = "classification"


@float32_default()  # whatever torch's default dtype: float32 weights
def evaluate_checkpoint(config: str | os.PathLike, weights: str | os.PathLike, output: Path,
                        overrides: list[str] | tuple[str, ...], device: torch.device, *,
                        backend: str | None = None) -> dict[str, Any]:
    """Top-1/top-5 (percent) of classifier `weights` on `data.root/data.val_split`; writes
    OUTPUT/metrics.json ({"classification": {"top1", "top5"}, "images", "weights"}).

    `weights`: a checkpoint of tools/pretrain.py (model_final.pth, model_best.pth, a mid-run
    one), whose labels are its recorded class names, or torchvision / timm classifier weights,
    whose labels are the val folder's classes in sorted order (ImageFolder's, as they were
    trained on ImageNet), or an export of either (tools/export.py's folder or model.onnx,
    float32 or int8: run by ONNX Runtime on crops made as it was exported). `backend` is for
    COCO evaluation, not used.
    """
    from .pretraining import ClassificationTask, check_data_settings  # (it imports this file)

    _, cfg = load_task_config(config, overrides, TASK)
    check_data_settings(cfg)
    val_dir = Path(str(cfg.data.root)) / str(cfg.data.val_split)
    exported = OnnxClassifier(weights, device) if is_onnx(weights) else None
    if exported is not None:
        crop_as_exported(exported, cfg, weights, overrides)
        num_classes = int(exported.metadata["num_classes"])
        names = exported.metadata["class_names"]
        # class_i: the export of foreign weights, which named none (the val folders' sorted
        # names label them, as the .pth's), unless the folders are so named
        placeholders = names == [f"class_{i}" for i in range(num_classes)]
        unnamed = placeholders and val_dir.is_dir() and not set(class_folders(val_dir)) <= set(
            names)
        # the graph normalises itself: the crops reach it as they were read (0..255)
        provenance = {"class_names": None if unnamed else names,
                      "pixel_mean": [0.0] * 3, "pixel_std": [1.0] * 3}
    else:
        num_classes, provenance = classifier_checkpoint(weights, "evaluate")
        warn_of_another_val_transform(weights, provenance, cfg.data, "this evaluation resizes")
        if not provenance.get("config") and (cfg.data.val_interpolation == "area"
                                             or cfg.train.amp):
            logger.info("%s records no evaluation of its own (torchvision's or timm's): scored "
                        "with data.val_interpolation=%s and train.amp=%s; their published "
                        "top-1 is of bilinear (torchvision's) or bicubic (timm's) crops in "
                        "float32 (data.val_interpolation=bilinear train.amp=false)", weights,
                        cfg.data.val_interpolation, cfg.train.amp)
    recorded = [str(n) for n in provenance.get("class_names") or []] or None
    samples, class_names = scan_image_folder(val_dir, recorded)
    if recorded is None and len(class_names) != num_classes:
        raise DatasetError(f"{weights} predicts {num_classes} classes and names none; {val_dir} "
                           f"has {len(class_names)} class folders: its sorted folder names are "
                           f"the labels, so they must be as many (ImageNet's val split: the "
                           f"1000 synsets)")
    if recorded is not None and len(recorded) != num_classes:
        raise ConfigError(f"{weights} records {len(recorded)} class names for {num_classes} "
                          f"outputs")
    if exported is not None:
        model = exported
    else:
        with config_section("model"):
            model = build_classifier(cfg.model.name, num_classes, weights=weights,
                                     config_prefix="model.options.",
                                     **to_plain(cfg.model.options))
    task = ClassificationTask()
    # the normalisation the weights learnt with; foreign weights: the config's
    task.configure(cfg, class_names, provenance.get("pixel_mean") or cfg.data.pixel_mean,
                   provenance.get("pixel_std") or cfg.data.pixel_std)
    model.to(device).eval()
    if exported is not None:  # (ONNX Runtime's graph: its own precision and layout)
        task.amp, task.channels_last = None, False
    elif task.channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = ImageFolderDataset(
        samples=samples, class_names=class_names,
        transform=build_val_transform(image_size=cfg.data.image_size, resize=cfg.data.val_resize,
                                      normalize=False, interpolation=cfg.data.val_interpolation))
    loader = CountedLoader(build_test_loader(
        dataset, batch_size=max(1, int(cfg.train.batch_size) // get_world_size()),
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda", collate_fn=collate_images))
    amp_for_device(task.amp, device.type, doing="evaluating")  # (said here: evaluate is quiet)
    with torch.no_grad():
        metrics = task.evaluate(model, loader, device)
    result = nan_to_none(metrics)
    result["images"] = loader.report(logger, "val", LEFT_OUT, scoring=True)
    result["weights"] = str(weights)
    result.update(export_source(model))
    if is_main_process():
        atomic_write_json(result, output / "metrics.json")
        print(task.summary(metrics), flush=True)
    return result
