"""The semantic segmentation task the runner drives (engine.runner): FCN, DeepLabV3 and
DeepLabV3+ on folder or COCO data.

A batch is a list of samples (segmentation.data.SemSegDataset): augmented crops with their
class-id maps; the model pads, normalises and returns `loss_sem_seg` (and `loss_aux`).
"""
from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from resnet_detect import backbones
from resnet_detect.backbones.model_weights import resumed_model_check
from resnet_detect.backbones.weights import read_checkpoint
from resnet_detect.engine import atomic_write_json, barrier, is_main_process
from resnet_detect.engine.amp import float32_default
from resnet_detect.engine.compilation import inference_compile_settings
from resnet_detect.engine.config import ConfigError, as_override
from resnet_detect.engine.export import (ExportError, check_class_names, export_source,
                                         exported_from, is_onnx)
from resnet_detect.engine.files import nan_to_none, replace_folder
from resnet_detect.engine.data import CountedLoader, DatasetError
from resnet_detect.engine.task_api import LEFT_OUT, TaskData, format_metric
from resnet_detect.engine.model_check import check_model_config

from .browse import browse_split
from .convert import SEGMENTER_WEIGHTS
from .build import BASE_CONFIG, build_model, load_config, provenance_from_config
from .data import (build_dataset, build_test_loader, check_same_classes, resolve_palette,
                   warn_of_an_ignored_class)
from .data import prefer_command_line_sources as resolve_overrides
from .evaluation import SemSegEvaluator, write_confusion_matrix
from .export import export_segmentor
from .inference import TTAInference, evaluate_model, tta_from_config
from .predictor import Predictor, build_renderer, placeholder_names
from .records import write_label_map

logger = logging.getLogger(__name__)
PREDICTIONS = "predictions"  # tools/eval.py --save-predictions: OUTPUT/predictions/<image>.png

__all__ = ["BASE_CONFIG", "RENAMED_KEYS", "TASK", "SemSegTask", "browse_split", "build_renderer",
           "evaluate_checkpoint", "export_model", "resolve_overrides"]


@float32_default()  # whatever torch's default dtype: float32 weights
def evaluate_checkpoint(config: str, weights: str, output: Path, overrides: Sequence[str],
                        device: torch.device, *, backend: str | None = None,
                        save_predictions: bool = False,
                        confusion: bool = False) -> dict[str, Any]:
    """mIoU of `weights` on data.val (tools/eval.py); writes OUTPUT/metrics.json, with
    `save_predictions` each image's class map as OUTPUT/predictions/<its path under
    data.val.img_dir>.png (uint8 class ids), with `confusion` OUTPUT/confusion_matrix.csv
    (pixels) and .png. `backend` is for COCO evaluation, not used."""
    predictor = Predictor(config, weights=weights, overrides=overrides, device=device)
    cfg = load_config(config, overrides)
    cfg.model.num_classes = predictor.model.num_classes
    trained = predictor.trained_reduce_zero_label
    # (a COCO file's masks are drawn with background 0, whatever the weights' own data was)
    if (isinstance(trained, bool) and trained != bool(cfg.data.reduce_zero_label)
            and not cfg.data.val.ann_file and is_main_process()):
        logger.warning("%s was trained on masks read with data.reduce_zero_label=%s, these are "
                       "read with %s: where they are labelled as its training masks were, "
                       "every class id is one off (and the mIoU wrong); then set "
                       "data.reduce_zero_label=%s", weights, as_override(trained),
                       as_override(bool(cfg.data.reduce_zero_label)), as_override(trained))
    if not cfg.data.class_names and not cfg.data.val.ann_file:
        # folder masks name no classes (a COCO file's are compared with the weights' below)
        cfg.data.class_names = list(predictor.class_names)
    loader = build_test_loader(cfg, unlabelled=save_predictions)
    labelled = loader.dataset.labelled
    if not labelled and not save_predictions:
        raise DatasetError(f"{cfg.data.val.ann_file} has no annotations: nothing to score "
                           "(--save-predictions writes the predicted class maps)")
    names = cfg.data.class_names
    source = cfg.data.val.ann_file or (f"data.class_names={names}" if isinstance(names, str)
                                       else "data.class_names")
    if len(loader.dataset.class_names) != predictor.model.num_classes:
        raise DatasetError(f"{weights} predicts {predictor.model.num_classes} classes, {source} "
                           f"has {len(loader.dataset.class_names)}: class ids would mean other "
                           f"classes")
    unnamed = predictor.class_names == placeholder_names(predictor.model.num_classes)
    if is_onnx(weights) and not unnamed:
        # an export knows its classes only by name (placeholders: weights without names)
        check_class_names(predictor.model, loader.dataset.class_names, source)
    elif predictor.names_recorded and predictor.class_names != loader.dataset.class_names:
        raise DatasetError(f"{weights} was trained on the classes "
                           f"{predictor.class_names[:10]}, {source} has "
                           f"{loader.dataset.class_names[:10]}: the labels would mean other "
                           "classes")
    if labelled:  # as a training does: before the inference, not in a loader worker during it
        loader.dataset.check_masks("val")
    evaluator = SemSegEvaluator(predictor.model.num_classes, predictor.class_names,
                                predictor.model.ignore_index)
    counted = CountedLoader(loader)
    dataset = loader.dataset
    # written aside and swapped in whole at the end: an earlier run's maps are neither mixed
    # with these (another split, other weights) nor half replaced by a run that fails
    partial = output / f"{PREDICTIONS}.partial"
    if save_predictions and is_main_process():
        shutil.rmtree(partial, ignore_errors=True)  # a killed run's
        partial.mkdir(parents=True)
    barrier()
    save = (prediction_writer(partial, Path(cfg.data.val.img_dir),
                              [dataset.record(i)["file_name"] for i in range(len(dataset))],
                              offset=int(cfg.data.reduce_zero_label))
            if save_predictions else None)
    # metrics.json is written below, with the images and weights (not twice)
    try:
        result = evaluate_model(predictor.model, counted, evaluator, tta=predictor.tta,
                                on_prediction=save)
        # (an earlier run's maps stay where this one read no image)
        images = counted.report(logger, "val", LEFT_OUT, scoring=True)
        if save_predictions:
            barrier()  # every process's maps are written
            if is_main_process():
                replace_folder(partial, output / PREDICTIONS)
    finally:  # stopped (Ctrl-C, SIGTERM) or failed: no half-written maps left behind
        if save_predictions and is_main_process():
            shutil.rmtree(partial, ignore_errors=True)
    result = nan_to_none(result) if labelled else {"sem_seg": None}
    result["images"] = images
    result["weights"] = str(weights)
    result.update(export_source(predictor.model))
    if is_main_process():
        atomic_write_json(result, output / "metrics.json")
        m = result["sem_seg"]
        if m is None:
            print(f"data.val has no labels: predictions written to {output / PREDICTIONS}, "
                  f"nothing scored", flush=True)
            return result
        if m["mIoU"] is None:
            logger.warning("no pixel of %s was scored: every val pixel is %d (model.ignore_index)"
                           " or no val image could be read", cfg.data.val.mask_dir
                           or cfg.data.val.ann_file, predictor.model.ignore_index)
        print(f"mIoU = {format_metric(m['mIoU'])}  pixel_acc = {format_metric(m['pixel_acc'])}"
              f"  mAcc = {format_metric(m['mAcc'])}", flush=True)
        if confusion:
            for line in write_confusion_matrix(evaluator.total, predictor.class_names, output):
                print(line, flush=True)
    return result


def prediction_writer(folder: Path, img_dir: Path, file_names: Sequence[str], offset: int = 0
                      ) -> Callable[[dict[str, Any], torch.Tensor], None]:
    """(sample, class map) -> writes the map plus `offset` as a uint8 PNG in `folder` under
    the image's path inside `img_dir` (mmsegmentation's format_only, for test servers and
    other tools; offset 1 under data.reduce_zero_label: the masks' own values 1..K); an
    image outside it by its name. Names that would meet (a.jpg and a.png) keep their suffix
    (a.jpg.png, a.png.png), then take -2, -3 where they still meet. Decided from every image
    of the split (`file_names`), so that each process of a distributed evaluation writes its
    images under the same names."""
    root = Path(os.path.abspath(img_dir))

    def relative(file_name: str) -> Path:
        # as given (a symlinked sub-folder stays inside); "../" in a COCO file_name resolved
        image = Path(os.path.abspath(file_name))
        return image.relative_to(root) if image.is_relative_to(root) else Path(image.name)

    paths = {f: relative(f) for f in file_names}
    meeting = Counter(p.with_suffix(".png") for p in paths.values())
    taken: set[Path] = set()
    out_of = {}
    for f, path in paths.items():
        name = path.with_suffix(".png")
        name = name if meeting[name] == 1 else path.with_name(path.name + ".png")
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = name.with_name(f"{name.stem}-{n}{name.suffix}")
        taken.add(unique)
        out_of[f] = folder / unique

    def save(sample: dict[str, Any], pred: torch.Tensor) -> None:
        write_label_map((pred + offset).to(torch.uint8).cpu().numpy(),
                        out_of[sample["file_name"]])
    return save


@float32_default()  # whatever torch's default dtype: float32 weights
def export_model(config: str, weights: str, folder: Path, overrides: Sequence[str] = ()
                 ) -> dict[str, Any]:
    """Export `weights` built as `config` says to folder/model.onnx (tools/export.py);
    returns export.json."""
    predictor = Predictor(config, weights=weights, overrides=overrides, compiled=False)
    tta = predictor.tta
    if tta.single_scale is None:
        raise ExportError(f"an exported segmenter runs one test scale without flip or windows; "
                          f"{config} asks for test.scales={as_override(tta.scales)} "
                          f"test.flip={as_override(tta.flip)} "
                          f"test.window={as_override(tta.window)}: add e.g. "
                          f"test.scales=[{tta.scales[0]}] test.flip=false test.window=null")
    names = predictor.class_names  # weights without names (torchvision's): the config's
    if names == placeholder_names(predictor.model.num_classes):
        logger.warning("%s names no classes and data.class_names is not set: the export "
                       "calls them %s...; tools/eval.py will refuse data with other names",
                       weights, ", ".join(names[:3]))
    try:  # the overlays' colours travel with the graph; drawing is no reason to refuse
        colours = resolve_palette(predictor.palette, len(names))
    except (ConfigError, DatasetError, FileNotFoundError) as err:
        logger.warning("%s; the export records no palette", err)
        colours = None
    return export_segmentor(predictor.model, folder, class_names=names, scale=tta.single_scale,
                            max_size=tta.max_size,
                            reduce_zero_label=predictor.trained_reduce_zero_label,
                            model_config=predictor.model_config,
                            palette=None if colours is None else colours.tolist(),
                            source=exported_from(weights))


class SemSegTask:
    """Semantic segmentation for `engine.runner.run_training`."""

    name = "sem_seg"
    primary_metrics = "sem_seg"

    @staticmethod
    def metric_names(cfg: DictConfig) -> list[str]:
        """What train.best_metric may name."""
        return ["sem_seg/mIoU", "sem_seg/pixel_acc", "sem_seg/mAcc"]

    check_resumed_model = staticmethod(resumed_model_check(SEGMENTER_WEIGHTS))

    def __init__(self) -> None:
        self.class_names: list[str] = []
        self.cfg: DictConfig | None = None
        self.tta: TTAInference | None = None

    @staticmethod
    def _checked(cfg: DictConfig) -> tuple[TTAInference | None, Any]:
        """`check_config`'s checks; (the test-time views, the palette's colours or None)."""
        tta = tta_from_config(cfg)  # its errors before training, not at the evaluation
        inference_compile_settings(cfg)
        check_model_config(build_model, cfg, read_weights=read_checkpoint)
        return tta, resolve_palette(cfg.data.palette, None)  # its file before the data

    def check_config(self, cfg: DictConfig) -> None:
        self._checked(cfg)

    def prepare(self, cfg: DictConfig) -> TaskData:
        self.tta, colours = self._checked(cfg)
        if colours is not None:  # the run's config.yaml and weights hold the colours, not a path
            cfg.data.palette = colours.tolist()
        train = build_dataset(cfg, "train")  # checks the data first
        if not train.labelled:
            raise DatasetError(f"{cfg.data.train.ann_file} has no annotations: nothing to "
                               "train on")
        val = build_dataset(cfg, "val") if cfg.data.val.img_dir else None
        if val is not None and not val.labelled:
            raise DatasetError(f"{cfg.data.val.ann_file} has no annotations to score the "
                               "training's evaluations against: give an annotated val file, "
                               "or leave data.val unset (tools/eval.py --save-predictions "
                               "predicts such a file)")
        train.check_mask_headers("train")
        if val is not None:
            check_same_classes(train, val, cfg)
            # before training, not at the evaluation after it; and before the training masks'
            # sample: every val mask's class ids are read, so a wrong class count is named
            # from all of them (val masks holding a class the sample lacks: two tries)
            val.check_masks("val")
        train.check_mask_sample("train")
        train.warn_of_padded_crops(cfg.data.train.crop_size, cfg.data.train.scale_range,
                                   cfg.data.train.fit_size)
        train.warn_of_objects_as_ignore("train")
        warn_of_an_ignored_class(train.class_names, train.ignore_index)
        self.class_names = train.class_names
        cfg.model.num_classes = len(self.class_names)
        resolve_palette(cfg.data.palette, len(self.class_names))  # one colour per class
        self.cfg = cfg
        description = (f"{len(train)} train / {len(val) if val else 'no'} val images, "
                       f"{len(self.class_names)} classes {self.class_names}")
        return TaskData(train=train, val=val, description=description)

    def build_model(self, cfg: DictConfig) -> nn.Module:
        return build_model(cfg, class_names=self.class_names)

    def losses(self, model: nn.Module, batch: list[dict[str, Any]],
               device: torch.device) -> Mapping[str, torch.Tensor]:
        images = [s["image"].to(device, non_blocking=True) for s in batch]
        targets = [{"gt_sem_seg": s["gt_sem_seg"].to(device)} for s in batch]
        return model(images, targets)

    def evaluate(self, model: nn.Module, loader: DataLoader,
                 device: torch.device) -> dict[str, dict[str, Any]]:
        assert self.cfg is not None
        evaluator = SemSegEvaluator(len(self.class_names), self.class_names,
                                    self.cfg.model.ignore_index)
        return evaluate_model(model, loader, evaluator, tta=self.tta)

    def summary(self, metrics: dict[str, dict[str, Any]]) -> str:
        return f"mIoU = {format_metric(metrics.get('sem_seg', {}).get('mIoU'))}"

    def provenance(self, cfg: DictConfig) -> dict[str, Any]:
        return provenance_from_config(cfg, self.class_names)

    def save_final(self, cfg: DictConfig, model: nn.Module, iteration: int) -> list[Path]:
        path = Path(cfg.train.output_dir) / "model_final.pth"
        backbones.save_checkpoint(path, model.state_dict(), self.provenance(cfg),
                                  iteration=iteration)
        return [path]


TASK = SemSegTask
RENAMED_KEYS: dict[str, str] = {}
