"""The detection task the runner drives (engine.runner): Faster / Mask R-CNN on COCO data.

A batch is a list of N samples (``detection.data.DetectionDataset``); the model takes
N images (3, H_i, W_i) and per image gt_boxes (M, 4) / gt_classes (M,) (and gt_masks
(M, H_i, W_i) with ``model.mask_on``, from the annotations' polygons or RLE).
``train.batch_size`` counts images per step over all processes; each process loads
batch_size / world_size.
Everything that can fail on the data (JSON structure, unknown ids, missing image files)
fails in `detection.data.build_datasets` before a model is built.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from resnet_detect.engine.amp import float32_default
from resnet_detect.engine.config import ConfigError
from resnet_detect import backbones
from resnet_detect.backbones.model_weights import resumed_model_check
from resnet_detect.backbones.weights import read_checkpoint
from resnet_detect.engine import atomic_write_json, is_main_process, to_plain
from resnet_detect.engine.compilation import compile_for_inference, inference_compile_settings
from resnet_detect.engine.data import (CategoryMapping, CountedLoader, DatasetError, brief,
                                       build_test_loader, read_coco_json)
from resnet_detect.engine.export import ExportError, export_source, exported_from, is_onnx
from resnet_detect.engine.files import nan_to_none
from resnet_detect.engine.task_api import TaskData, format_metric
from resnet_detect.engine.model_check import check_model_config
from resnet_detect.engine.trainer import eval_mode

from .build import build_model
from .convert import DETECTOR_WEIGHTS
from .config import BASE_CONFIG, test_resize  # noqa: F401 (BASE_CONFIG: engine.tasks)
from .data import build_datasets, build_val_dataset
from .data.splits import chosen_classes, train_settings
from .evaluation import (COCO_MAX_DETS, METRIC_NAMES, RESULTS_FILE, COCOEvaluator,
                         coco_backend, mask_rles)
from .export import export_detector
from .federated import FREQUENCY_GROUPS, IMAGE_LISTS, is_federated
from .browse import browse_split
from .predictor import (LoadedDetector, build_renderer, load_detector,
                        warn_of_classes_not_chosen)
from .rcnn import GeneralizedRCNN
from .tiles import Tiles, refuse_tiles, tiles_from_config
from .tiles import describe as describe_tiles
from .tta import DetectionTTA, describe, refuse_tta, tta_from_config
from .voc_eval import check_voc_metric

logger = logging.getLogger(__name__)
# COCOeval scores every image of the annotation file
UNREADABLE_VAL = "their objects count as missed"
__all__ = ["BASE_CONFIG", "RENAMED_KEYS", "TASK", "DetectionTask", "browse_split", "build_renderer",
           "evaluate_checkpoint", "export_model"]


def resolve_num_classes(cfg: DictConfig, mapping: CategoryMapping) -> None:
    """Set model.num_classes from the training JSON, or check the configured value."""
    configured = cfg.model.num_classes
    if configured is None:
        cfg.model.num_classes = mapping.num_classes
    elif configured != mapping.num_classes:
        background = (f" (model.num_classes counts the objects' classes, as detectron2's "
                      f"NUM_CLASSES and mmdetection's num_classes: {mapping.num_classes} here; "
                      f"torchvision's num_classes counts the background too)"
                      if configured == mapping.num_classes + 1 else "")
        raise ConfigError(f"model.num_classes is {configured} but {cfg.data.train.ann_file} has "
                          f"{mapping.num_classes} categories{background}; leave it null to read "
                          "it from there (model.num_classes=null: a run's config.yaml records "
                          "its own)")


def scored_detections(cfg: DictConfig) -> int:
    """Detections per image and category the COCO evaluation scores: COCO's 100, or the
    model's detections_per_image where it keeps more (dense scenes), as detectron2 does."""
    return max(COCO_MAX_DETS, int(cfg.model.roi_heads.detections_per_image))


def iou_types(model: GeneralizedRCNN) -> tuple[str, ...]:
    """What COCO evaluation scores for `model`: ("bbox",), plus "segm" for Mask R-CNN."""
    return ("bbox", "segm") if model.mask_on else ("bbox",)


@torch.no_grad()
def evaluate_all(model: GeneralizedRCNN, loader: DataLoader, evaluator: COCOEvaluator,
                 tta: DetectionTTA | Tiles | None = None, *,
                 before_scoring: Callable[[], None] | None = None
                 ) -> dict[str, dict[str, Any]]:
    """{iou_type: metrics} of `model` over `loader` for the evaluator's iou_types ("bbox",
    "segm"); every process scores its share, values in percent. With `tta` (views, or
    tiles) the loader's images are at their own size (`build_val_dataset(resize=False)`).
    `before_scoring` runs once every image was predicted, before the evaluator writes its
    results file (tools/eval.py refuses there to score a split of which no image was
    read)."""
    evaluator.reset()
    device = model.pixel_mean.device
    with eval_mode(model):
        for batch in loader:
            if not batch:
                continue
            sizes = [(s["height"], s["width"]) for s in batch]
            if tta is None:
                outputs = model.inference([s["image"].to(device) for s in batch],
                                          output_sizes=sizes, pasted=False)
            else:
                outputs = [tta(model, s["image"].numpy().transpose(1, 2, 0), pasted=False)
                           for s in batch]
            for out, size in zip(outputs, sizes):
                if "mask_probs" in out:
                    out["masks"] = mask_rles(out, size, threshold=model.mask_threshold)
            evaluator.process(batch, outputs)
    if isinstance(loader, CountedLoader):
        loader.raise_if_stopped()
    if before_scoring is not None:
        before_scoring()
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


def refuse_other_classes(loaded: LoadedDetector, mapping: CategoryMapping, ann_file: str,
                         weights: str) -> None:
    """The weights' classes must be the evaluation file's: a shared id named otherwise, or a
    class (named once on both sides) under an id of the file the weights lack (a re-export
    renumbered it: its detections would be dropped, its objects missed), is refused, as are
    weights none of whose ids the file has. A bare id as the name (torchvision weights) names
    no class."""
    name_of = dict(zip(mapping.dataset_ids, mapping.names))
    ids_of: dict[str, list[int]] = {}
    for c, n in name_of.items():
        ids_of.setdefault(n, []).append(c)
    name_counts = Counter(loaded.class_names)
    named = [(c, n) for c, n in zip(loaded.category_ids, loaded.class_names) if n != str(c)]
    clash = [(c, n, name_of[c]) for c, n in named if c in name_of and n != name_of[c]]
    moved = [(c, n, ids_of[n][0]) for c, n in named if len(ids_of.get(n, ())) == 1
             and name_counts[n] == 1 and ids_of[n][0] not in loaded.category_ids]
    source = loaded.model.metadata_source if is_onnx(weights) else weights
    refused = ExportError if is_onnx(weights) else DatasetError
    if clash:
        raise refused(
            f"{source} names the categories {[(c, n) for c, n, _ in clash][:10]}, {ann_file} "
            f"{[(c, d) for c, _, d in clash][:10]}: the labels would mean other classes")
    if moved:
        raise refused(
            f"{source} has the categories {[(c, n) for c, n, _ in moved][:10]}, {ann_file} "
            f"the same names under other ids {[(d, n) for _, n, d in moved][:10]}: their "
            f"detections would be dropped and those objects scored as missed; give the file "
            f"the weights' ids")
    if not set(loaded.category_ids) & set(name_of):  # another dataset's weights or file
        raise refused(
            f"none of the category ids of {source} {brief(loaded.category_ids)} occur in "
            f"{ann_file} (ids {brief(list(mapping.dataset_ids))}): every detection would be "
            f"dropped; evaluate weights trained on this file's categories")


def _warn_of_undetectable_objects(model_ids: Sequence[int], dataset: Any, mapping: Any,
                                  ann_file: Path, weights: str) -> None:
    """Objects of the file's categories the weights were never trained on: each such category
    scores AP 0 and lowers the mean, without a word otherwise."""
    known = set(model_ids)
    counts = Counter(int(label) for i in range(len(dataset))
                     for label in dataset.record(i)["classes"])
    other = [f"{mapping.names[k]} (id {mapping.dataset_ids[k]}): {n}"
             for k, n in sorted(counts.items()) if mapping.dataset_ids[k] not in known]
    if other:
        logger.warning("%s has objects of %d categories the weights %s were not trained on "
                       "(%s objects): each scores AP 0 and lowers the mean AP", ann_file,
                       len(other), weights, ", ".join(other))


@float32_default()  # whatever torch's default dtype: float32 weights
def evaluate_checkpoint(config: str, weights: str, output: Path, overrides: Sequence[str],
                        device: torch.device, *, backend: str | None = None) -> dict[str, Any]:
    """COCO box (and mask) AP of `weights` on data.val (tools/eval.py): writes
    OUTPUT/coco_instances_results.json and OUTPUT/metrics.json (percent, NaN -> null; per
    IoU type what a training's metrics.json holds, and the weights). A file without
    annotations (COCO's test-dev image info) gets its results written, nothing scored.
    `backend` None: the config's data.val.coco_backend."""
    loaded = load_detector(config, weights=weights, overrides=overrides, device=device)
    backend = backend or coco_backend(loaded.cfg)
    tta = None if is_onnx(weights) else tta_from_config(loaded.cfg)
    tiles = tiles_from_config(loaded.cfg)
    compile_for_inference(loaded.model, loaded.cfg, device, weights)
    val = build_val_dataset(loaded.cfg, resize=tta is None and tiles is None)
    if val is None:
        raise ConfigError("data.val.ann_file and data.val.img_dir must be set to evaluate")
    dataset, mapping, ann_file = val.dataset, val.mapping, val.ann_file
    # (ids data.classes leaves out are in the file: said of its chosen categories)
    chosen = (f"the categories data.classes keeps of {ann_file}"
              if loaded.cfg.data.get("classes") else ann_file)
    refuse_other_classes(loaded, mapping, chosen, weights)
    known = set(mapping.dataset_ids)
    unknown = [c for c in loaded.category_ids if c not in known]
    if unknown:
        logger.warning("%d of the model's category ids are not in %s: %s", len(unknown),
                       chosen, unknown[:10])
    _warn_of_undetectable_objects(loaded.category_ids, dataset, mapping, ann_file, weights)
    loader = CountedLoader(build_test_loader(dataset,
                                             num_workers=min(loaded.cfg.data.num_workers, 1)))
    types = iou_types(loaded.model)
    evaluator = COCOEvaluator(ann_file, category_ids=loaded.category_ids, output_dir=output,
                              backend=backend, iou_types=types, score=val.annotated,
                              max_dets=scored_detections(loaded.cfg),
                              kept_per_image=loaded.cfg.model.roi_heads.detections_per_image,
                              voc_metric=loaded.cfg.data.val.voc_metric,
                              scored_categories=mapping.dataset_ids
                              if loaded.cfg.data.get("classes") else None)
    if tta is not None:
        logger.info("test-time augmentation: %s", describe(tta))
    if tiles is not None:
        logger.info("sliced inference: %s", describe_tiles(tiles, loaded.model))
    images: dict[str, int] = {}
    metrics = evaluate_all(loaded.model, loader, evaluator, tiles or tta,
                           before_scoring=lambda: images.update(
                               loader.report(logger, "val", UNREADABLE_VAL, scoring=True)))
    result: dict[str, Any] = {t: nan_to_none(metrics[t]) if val.annotated else None
                              for t in types}
    if "voc" in metrics:
        result["voc"] = nan_to_none(metrics["voc"])
    result["images"] = images
    result["weights"] = str(weights)
    result.update(export_source(loaded.model))
    if is_main_process():
        atomic_write_json(result, output / "metrics.json")
        files = f"results: {output / RESULTS_FILE}, metrics: {output / 'metrics.json'}"
        if not val.annotated:
            print(f"{ann_file} has no annotations: detections written, nothing scored "
                  f"({files})", flush=True)
        else:
            mask = f"  mask AP = {metrics['segm']['AP']:.1f}" if "segm" in metrics else ""
            voc = (f"  VOC mAP = {metrics['voc']['mAP']:.1f} ({metrics['voc']['mode']})"
                   if "voc" in metrics else "")
            print(f"box AP = {metrics['bbox']['AP']:.1f}{mask}{voc}  ({files})", flush=True)
    return result


@float32_default()  # whatever torch's default dtype: float32 weights
def export_model(config: str, weights: str, folder: Path, overrides: Sequence[str] = (),
                 mask_output: str | None = None) -> dict[str, Any]:
    """Export `weights` built as `config` says to folder/model.onnx (tools/export.py);
    returns export.json. `mask_output`: see `export.export_detector`."""
    loaded = load_detector(config, weights=weights, overrides=overrides)
    warn_of_classes_not_chosen(loaded.cfg, loaded.class_names, "exports")
    refuse_tta(loaded.cfg, "an exported graph")
    refuse_tiles(loaded.cfg, "an exported graph")
    return export_detector(loaded.model, folder, class_names=loaded.class_names,
                           category_ids=loaded.category_ids, resize=test_resize(loaded.cfg),
                           mask_output=mask_output, model_config=to_plain(loaded.cfg.model),
                           source=exported_from(weights))


def _refuse_lvis_metric_without_lvis(cfg: DictConfig) -> None:
    """train.best_metric APr / APc / APf needs a val file scored with LVIS's federated AP."""
    metric, ann_file = cfg.train.best_metric, cfg.data.val.ann_file
    frequency = dict(FREQUENCY_GROUPS).get(str(metric).rsplit("/", 1)[-1])
    if metric is None or frequency is None or not ann_file:
        return
    data = read_coco_json(ann_file)
    if not is_federated(data):
        raise ConfigError(f"train.best_metric {metric!r} is a group of LVIS's federated AP; "
                          f"{ann_file} is scored with COCO's AP (its images do not all list "
                          f"{' and '.join(IMAGE_LISTS)}): name one of "
                          f"{', '.join(METRIC_NAMES)}")
    annotated = {ann["category_id"] for ann in data["annotations"]}
    if not any(c.get("frequency") == frequency and c["id"] in annotated
               for c in data["categories"]):
        raise ConfigError(f"train.best_metric {metric!r}: no category of {ann_file} with "
                          f"objects has frequency {frequency!r}, so it is never defined and no "
                          f"model_best.pth would be kept; name another group or AP")


class DetectionTask:
    """Faster R-CNN / Mask R-CNN (model.mask_on) for `engine.runner.run_training`."""

    name = "detection"
    primary_metrics = "bbox"
    unreadable_val = UNREADABLE_VAL

    @staticmethod
    def slow_data_hint(cfg: DictConfig) -> str | None:
        """What makes this config's batches slow to make, for a run that waits for them."""
        if cfg.model.mask_on and cfg.data.train.mask_format == "bitmask":
            return ("Mask R-CNN's bitmask targets of many objects on large images are slow to "
                    "make: data.train.mask_format=polygon (detectron2's default) draws them "
                    "from the polygons")
        return None

    @staticmethod
    def metric_names(cfg: DictConfig) -> list[str]:
        """What train.best_metric may name (APr, APc, APf: an LVIS val file's only)."""
        groups = ["bbox", "segm"] if cfg.model.mask_on else ["bbox"]
        return [f"{group}/{name}" for group in groups
                for name in (*METRIC_NAMES, *(name for name, _ in FREQUENCY_GROUPS))] + (
            ["voc/mAP"] if cfg.data.val.get("voc_metric") is not None else [])

    check_resumed_model = staticmethod(resumed_model_check(DETECTOR_WEIGHTS))

    def __init__(self) -> None:
        self.mapping: CategoryMapping | None = None
        self.evaluator: COCOEvaluator | None = None

    @staticmethod
    def check_config(cfg: DictConfig) -> None:
        coco_backend(cfg)
        chosen_classes(cfg)
        check_voc_metric(cfg.data.val.voc_metric)
        # both splits' resize and augmentation keys and the test keys before the model and
        # its weights are read and the training file (minutes at COCO's size), not at
        # tools/eval.py after the training
        train_settings(cfg)
        tta_from_config(cfg)
        tiles_from_config(cfg)
        inference_compile_settings(cfg)
        check_model_config(build_model, cfg, read_weights=read_checkpoint)

    def prepare(self, cfg: DictConfig) -> TaskData:
        self.check_config(cfg)
        backend = coco_backend(cfg)
        data = build_datasets(cfg)
        resolve_num_classes(cfg, data.mapping)
        _refuse_lvis_metric_without_lvis(cfg)
        self.mapping = data.mapping
        if data.val is not None:
            self.evaluator = COCOEvaluator(
                cfg.data.val.ann_file, category_ids=data.mapping.dataset_ids,
                output_dir=Path(cfg.train.output_dir) / "inference", backend=backend,
                iou_types=("bbox", "segm") if cfg.model.mask_on else ("bbox",),
                max_dets=scored_detections(cfg),
                kept_per_image=cfg.model.roi_heads.detections_per_image,
                voc_metric=cfg.data.val.voc_metric,
                scored_categories=data.mapping.dataset_ids if cfg.data.classes else None)
        description = (f"{len(data.train)} train / {len(data.val) if data.val else 'no'} val "
                       f"images, {data.mapping.num_classes} classes "
                       f"{brief(data.mapping.names)}")
        factors = data.train.repeat_factors
        if factors is not None:
            description += (f"; repeat factor sampling: {int((factors > 1).sum())} images "
                            f"repeated (up to {factors.max():.2f} times), about "
                            f"{factors.sum():.0f} draws per pass over the "
                            f"{len(factors)}")
        return TaskData(train=data.train, val=data.val, description=description,
                        group_ids=data.train.group_ids, batch_keys=data.train.batch_keys,
                        repeat_factors=factors)

    def build_model(self, cfg: DictConfig) -> nn.Module:
        return build_model(cfg, class_names=self.mapping.names if self.mapping else None,
                           category_ids=self.mapping.dataset_ids if self.mapping else None)

    def losses(self, model: nn.Module, batch: list[dict[str, Any]],
               device: torch.device) -> Mapping[str, torch.Tensor]:
        images = [s["image"].to(device, non_blocking=True) for s in batch]
        targets = [{"gt_boxes": s["gt_boxes"].to(device), "gt_classes": s["gt_classes"].to(device)}
                   for s in batch]
        if "gt_masks" in batch[0]:
            for target, s in zip(targets, batch):  # (polygons stay on the host)
                masks = s["gt_masks"]
                target["gt_masks"] = (masks.to(device, non_blocking=True)
                                      if isinstance(masks, torch.Tensor) else masks)
        return model(images, targets)

    def evaluate(self, model: nn.Module, loader: DataLoader,
                 device: torch.device) -> dict[str, dict[str, Any]]:
        assert self.evaluator is not None
        return evaluate_all(model, loader, self.evaluator)

    def summary(self, metrics: dict[str, dict[str, Any]]) -> str:
        box = metrics.get("bbox", {})
        line = f"box AP = {format_metric(box.get('AP'))}"
        if box:
            line += (f"  AP50 = {format_metric(box.get('AP50'))}  "
                     f"AP75 = {format_metric(box.get('AP75'))}")
        if metrics.get("segm"):
            line += f"  mask AP = {format_metric(metrics['segm'].get('AP'))}"
        if metrics.get("voc"):
            line += f"  VOC mAP = {format_metric(metrics['voc'].get('mAP'))}"
        return line

    def provenance(self, cfg: DictConfig) -> dict[str, Any]:
        assert self.mapping is not None
        return make_provenance(cfg, self.mapping)

    def save_final(self, cfg: DictConfig, model: nn.Module, iteration: int) -> list[Path]:
        path = Path(cfg.train.output_dir) / "model_final.pth"
        backbones.save_checkpoint(path, model.state_dict(), self.provenance(cfg),
                                  iteration=iteration)
        return [path]


TASK = DetectionTask
RENAMED_KEYS: dict[str, str] = {}
