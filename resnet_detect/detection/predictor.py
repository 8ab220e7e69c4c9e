"""Predictor: one RGB uint8 (H, W, 3) image in, D detections out (boxes (D, 4) xyxy in
input-image pixels, scores (D,), labels (D,) dataset category ids, and for Mask R-CNN
masks (D, H, W) bool, or D COCO RLEs with `mask_format="rle"`).

The model is built from a config (a YAML path, a loaded config, or None for the config an
own checkpoint records) and whole-detector weights: an own checkpoint, whose provenance
supplies the class names, dataset category ids and pixel mean/std, or a torchvision
``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` state dict (labels are then
torchvision's, i.e. COCO ids).
"""
from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from resnet_detect.engine.amp import float32_default
from resnet_detect.engine.compilation import compile_for_inference
from resnet_detect.engine.config import (ConfigError, as_override, config_needed,
                                         is_positive_int)
from resnet_detect.backbones.model_weights import use_recorded_normalisation
from resnet_detect.backbones.weights import (foreign_checkpoint_hint, read_checkpoint,
                                            refuse_other_task, unwrap_state_dict)
from resnet_detect.engine.data import check_input_format, predictor_image, predictor_images
from resnet_detect.engine.data.coco import CategoryMapping, brief, read_coco_json
from resnet_detect.engine.distributed import usable_device
from resnet_detect.engine.host_memory import release_free_memory
from resnet_detect.engine.memory_format import place_model
from resnet_detect.engine.export import is_onnx, warn_of_settings_the_graph_keeps
from resnet_detect.engine.visualize import Renderer, draw_detections, palette

from .build import build_model
from .config import config_from_mapping, load_config, test_resize
from .convert import (has_mask_head, is_torchvision_faster_rcnn, load_detector_weights,
                      weight_bound_settings)
from .data import build_transforms
from .evaluation import mask_rles, mask_to_rle
from .export import OnnxDetector
from .rcnn import GeneralizedRCNN
from .tiles import describe as describe_tiles, tiles_from_config
from .tta import describe as describe_tta, refuse_tta, tta_from_config

logger = logging.getLogger(__name__)

MASK_FORMATS = ("bitmask", "rle")
_CLS_KEYS = ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias")


@dataclass
class LoadedDetector:
    """A detector with weights and what its labels mean.

    Attributes:
        model: the detector (eval mode).
        cfg: the config it was built from (weights keys cleared).
        class_names: name of each contiguous label.
        category_ids: dataset category id of each contiguous label.
        provenance: the checkpoint's provenance (empty for foreign weights).
    """

    model: GeneralizedRCNN
    cfg: DictConfig
    class_names: list[str]
    category_ids: list[int]
    provenance: dict[str, Any]


def _num_classes_of(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """K from the classifier rows (K + 1 with background; torchvision: background first)."""
    for key in _CLS_KEYS:
        if key in state_dict:
            return int(state_dict[key].shape[0]) - 1
    return None


def _config(config: str | os.PathLike | Mapping[str, Any] | DictConfig,
            overrides: Sequence[str]) -> DictConfig:
    if isinstance(config, (str, os.PathLike)):
        return load_config(config, overrides)
    return config_from_mapping(config, overrides, source="the config given to Predictor")


def _categories_of_the_config(cfg: DictConfig, num_classes: int, source: str,
                              names: list[str]) -> tuple[list[int], list[str]]:
    """(ids, names) of weights that record no category ids (this project's checkpoints of
    before 2026-12-02, mid-run ones too), from the categories of the config's val file: by
    name where the weights name their classes, else in id order where the file has as many;
    else ids 1..K (which scored another dataset's numbering as every class's); said either
    way."""
    ann_file = (cfg.get("data") or {}).get("val", {}).get("ann_file")
    categories, problem = [], "data.val.ann_file is not set"
    if ann_file:
        try:
            categories = read_coco_json(ann_file, annotations_optional=True)["categories"]
        except (OSError, ValueError) as err:
            problem = f"data.val.ann_file cannot be read ({err})"
    found = CategoryMapping.from_categories(categories) if categories else None
    if found is not None:
        by_name = dict(zip(found.names, found.dataset_ids))
        if names and len(set(names)) == len(names) and set(names) <= by_name.keys():
            ids = [by_name[name] for name in names]
            logger.warning("%s records no category ids (an older checkpoint): its classes %s "
                           "are taken to be the categories of those names in %s, ids %s",
                           source, names, ann_file, ids)
            return ids, names
        if not names and found.num_classes == num_classes:
            logger.warning("%s records no category ids (an older checkpoint): its classes are "
                           "taken to be the categories of data.val.ann_file %s, ids %s, in "
                           "that order", source, ann_file, list(found.dataset_ids))
            return list(found.dataset_ids), list(found.names)
        problem = (f"data.val.ann_file {ann_file} lacks its classes {names}" if names else
                   f"data.val.ann_file {ann_file} has {found.num_classes} categories, not "
                   f"its {num_classes} classes")
    logger.warning("%s records no category ids (an older checkpoint) and %s: its classes are "
                   "taken to be ids 1..%d", source, problem, num_classes)
    return list(range(1, num_classes + 1)), names


def load_detector(config: str | os.PathLike | Mapping[str, Any] | DictConfig | None, *,
                  weights: str | os.PathLike | None, overrides: Sequence[str] = (),
                  device: str | torch.device = "cpu") -> LoadedDetector:
    """Build a detector from a config and whole-detector weights.

    Args:
        config: YAML path or loaded config; None takes the config the checkpoint records.
        weights: own checkpoint or torchvision state dict; None uses `model.weights`.
        overrides: `key=value` config overrides (e.g. model.roi_heads.score_thresh=0.3).
        device: where the model runs.

    Raises:
        ValueError: no weights, no config, or weights that do not fit the config.
    """
    device = usable_device(device)
    if is_onnx(weights):
        return _load_onnx_detector(config, weights, overrides, device)
    cfg = _config(config, overrides) if config is not None else None
    source = weights if weights is not None else (cfg.model.weights if cfg is not None else None)
    if not source:
        raise ConfigError("no detector weights: pass weights=PATH (or set model.weights)")
    state_dict, provenance = unwrap_state_dict(read_checkpoint(source))
    provenance = dict(provenance or {})
    refuse_other_task(str(source), provenance, "detection", state_dict)
    if cfg is None:
        if not isinstance(provenance.get("config"), Mapping):
            raise config_needed(source)
        cfg = config_from_mapping(provenance["config"], overrides)
    elif isinstance(provenance.get("config"), Mapping):
        _warn_of_another_test_size(cfg, provenance["config"], source)
    cfg.model.weights = None
    cfg.model.backbone.weights = None  # the whole-detector weights replace them
    foreign = is_torchvision_faster_rcnn(state_dict)
    num_classes = _num_classes_of(state_dict)
    if num_classes is None:
        raise ConfigError(f"{source}: no box classifier ({_CLS_KEYS[0]}) in the weights"
                          + foreign_checkpoint_hint(state_dict))
    if cfg.model.num_classes not in (None, num_classes):
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but the weights {source} "
                          f"have {num_classes} classes")
    cfg.model.num_classes = num_classes
    _refuse_another_mask_head(has_mask_head(state_dict), cfg, source)
    use_recorded_normalisation(cfg.model, provenance, str(source))
    # its random start, replaced, is not the user's; float32 whatever the default dtype
    with torch.random.fork_rng(devices=[]), float32_default():
        model = build_model(cfg)
    load_detector_weights(model, {"model": state_dict, "provenance": provenance},
                          weight_bound_settings(cfg.model), source=str(source),
                          model_config=cfg.model)
    place_model(model, device, cfg.model.channels_last).eval()
    names = [str(n) for n in provenance.get("class_names") or []]
    if foreign:
        category_ids = list(range(1, num_classes + 1))  # torchvision: class k is id k + 1
    elif not provenance.get("category_ids"):
        category_ids, names = _categories_of_the_config(cfg, num_classes, str(source), names)
    else:
        category_ids = [int(c) for c in provenance["category_ids"]]
    if len(names) != num_classes:
        names = [str(c) for c in category_ids]
    if len(category_ids) != num_classes:
        raise ConfigError(f"{source}: provenance lists {len(category_ids)} category ids for "
                          f"{num_classes} classes")
    return LoadedDetector(model=model, cfg=cfg, class_names=names, category_ids=category_ids,
                          provenance=provenance)


def _warn_of_another_test_size(cfg: DictConfig, recorded: Mapping[str, Any],
                               source: str | os.PathLike) -> None:
    """A config whose test-time resize is not the one the weights were evaluated with in
    training (a model fine-tuned on small images, tested at the 1x config's 800 px)."""
    try:
        trained = test_resize(recorded)
    except (KeyError, TypeError, ValueError):  # an older or foreign record
        return
    if test_resize(cfg) != trained:
        logger.warning("%s records a config that tests at data.val.min_size=%s "
                       "data.val.max_size=%s (its evaluations in training); this config resizes "
                       "test images to %s, %s: the results will differ. To test as trained, "
                       "give the run's config.yaml as the config (Predictor: config=None) or "
                       "set those keys", source, trained[0], trained[1], *test_resize(cfg))


def _refuse_another_mask_head(masks: bool, cfg: DictConfig, source: object) -> None:
    """Weights with a mask head under a Faster R-CNN config, or none under a Mask R-CNN one."""
    if masks != bool(cfg.model.mask_on):
        raise ConfigError(
            f"the weights {source} have {'a' if masks else 'no'} mask head but model.mask_on "
            f"is {bool(cfg.model.mask_on)}; use a {'Mask' if masks else 'Faster'} R-CNN config "
            f"(or set model.mask_on={str(masks).lower()})")


def _load_onnx_detector(config: str | os.PathLike | Mapping[str, Any] | DictConfig | None,
                        weights: str | os.PathLike, overrides: Sequence[str],
                        device: str | torch.device) -> LoadedDetector:
    """An exported graph (tools/export.py) run by ONNX Runtime; test-time resizing as it was
    exported (export.json), whatever the config says."""
    model = OnnxDetector(weights, device)
    meta = model.metadata
    cfg = _config({} if config is None else config, overrides)
    fixed = _graph_settings(meta)
    # (without a config, the overrides alone are the user's: not the default 0.05)
    asked = (OmegaConf.select(cfg, "model.roi_heads.score_thresh") if config is not None
             or any(o.startswith("model.roi_heads.score_thresh=") for o in overrides) else None)
    raised = isinstance(asked, (int, float)) and asked > fixed.get(
        "model.roi_heads.score_thresh", float("inf"))
    if raised:  # (left out of the graph's output, as the model would)
        model.score_thresh = float(asked)
    if config is not None or any(o.startswith("model.mask_on=") for o in overrides):
        # as for a .pth (a Mask R-CNN graph under a Faster R-CNN config scored masks)
        _refuse_another_mask_head(model.mask_on, cfg, weights)
    differing = _differing(cfg, fixed, overrides, whole_config=config is not None)
    if raised:
        differing = [d for d in differing if not d.startswith("model.roi_heads.score_thresh ")]
    warn_of_settings_the_graph_keeps(weights, differing, overrides, list(fixed),
                                     meta.get("model_config"))
    refuse_tta(cfg, f"the exported graph {weights}")
    _refuse_tiles_the_graph_cannot_take(cfg, model, weights)
    cfg.data.val.min_size = meta["resize"]["short_side"]
    cfg.data.val.max_size = meta["resize"]["max_size"]
    cfg.model.mask_on = model.mask_on
    if meta.get("detections_per_image") is not None:  # what the evaluation scores follows it
        cfg.model.roi_heads.detections_per_image = int(meta["detections_per_image"])
    if meta.get("score_thresh") is not None and not raised:  # (tools/demo.py's hint when
        cfg.model.roi_heads.score_thresh = float(meta["score_thresh"])  # nothing is drawn)
    return LoadedDetector(model=model, cfg=cfg, class_names=list(meta["class_names"]),
                          category_ids=[int(c) for c in meta["category_ids"]], provenance={})


def _refuse_tiles_the_graph_cannot_take(cfg: DictConfig, model: OnnxDetector,
                                        weights: str | os.PathLike) -> None:
    """Tiles move each box's mask into the image: a graph that pastes masks at its input's
    size cannot take them; and they merge at the graph's NMS threshold (or the config's)."""
    tiles = tiles_from_config(cfg)
    if tiles is None:
        return
    asked = f"test.tiles.size={as_override(tiles.size)}"
    if model.mask_on and model.mask_output == "pasted":
        raise ConfigError(f"{asked}: the exported graph {weights} "
                          f"pastes its masks into its input; tiles need each box's own mask: "
                          f"export with tools/export.py --mask-output box (or add "
                          f"test.tiles.size=null)")
    meta, source = model.metadata, model.metadata_source
    if tiles.nms_thresh is None and not isinstance(meta.get("nms_thresh"), (int, float)):
        raise ConfigError(f"{asked}: {source} does not record the "
                          f"graph's nms_thresh, at which the tiles' detections merge: set "
                          f"test.tiles.nms_thresh (e.g. 0.5), or export again with "
                          f"tools/export.py")
    top = meta.get("detections_per_image")
    if not is_positive_int(top):
        raise ConfigError(f"{asked}: {source} does not record the "
                          f"graph's detections_per_image (got {top!r}), how many of the tiles' "
                          f"detections are kept: export again with tools/export.py")


def _graph_settings(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The config's values that an exported detector (its export.json `meta`) fixed."""
    fixed = {"data.val.min_size": meta["resize"]["short_side"],
             "data.val.max_size": meta["resize"]["max_size"],
             "model.mask_on": bool(meta["mask_on"]),
             "model.roi_heads.score_thresh": meta.get("score_thresh"),
             "model.roi_heads.nms_thresh": meta.get("nms_thresh"),
             "model.roi_heads.detections_per_image": meta.get("detections_per_image")}
    if meta["mask_on"]:
        fixed["model.roi_heads.mask_threshold"] = meta.get("mask_threshold")
    # (None: a key exports before it did not record; a max_size of None is "no cap")
    return {key: value for key, value in fixed.items()
            if value is not None or key == "data.val.max_size"}


def _differing(cfg: DictConfig, fixed: Mapping[str, Any], overrides: Sequence[str],
               whole_config: bool) -> list[str]:
    """What the config (`whole_config`) or the overrides ask for that the exported graph
    (its `_graph_settings`) does otherwise, "key graph's (config: asked)": its resize, masks
    and thresholds are those of its export (a Mask R-CNN config given a Faster R-CNN export
    scores no masks)."""
    overridden = [o.split("=", 1)[0] for o in overrides]
    asked = {key: OmegaConf.select(cfg, key) for key in fixed}
    asked["data.val.min_size"], asked["data.val.max_size"] = test_resize(cfg)
    return [f"{key} {as_override(value)} (config: {as_override(asked[key])})"
            for key, value in fixed.items()
            if (whole_config or key in overridden) and asked[key] != value]


class Predictor:
    """`Predictor(config, weights=..., overrides=[...])(rgb_uint8_hxwx3 or a path)` ->
    detections; `.predict_batch([rgb, ...])` -> one per image, the images in one forward pass.

    Test-time resizing follows `data.val.min_size` / `data.val.max_size`, test-time
    augmentation the `test` section (`detection.tta`), tiles of large images `test.tiles`
    (`detection.tiles`); score threshold, NMS threshold and
    detections per image follow `model.roi_heads.*`; `score_thresh` changes the threshold
    afterwards.

    Args:
        config: YAML path, or a loaded config; None takes the config the weights record.
        weights: whole-detector weights, or an exported `.onnx` (or its folder; run by ONNX
            Runtime); None uses `model.weights` of the config.
        overrides: `key=value` config overrides.
        device: where the model runs ("cpu", "cuda", ...).
        release_memory: after each prediction on the CPU, hand the memory freed by it back
            to the system (`engine.host_memory.release_free_memory`), so that a long-running
            service fed images of many sizes keeps its size; False keeps that memory for the
            next call, which then page-faults less (BENCHMARKS.md, "A Predictor in a
            long-running process").
        input_format: the channel order of the arrays given, "RGB" or "BGR" (OpenCV's
            `cv2.imread`, detectron2's DefaultPredictor's and mmdetection's default); a
            path given is read as it should be either way.
        mask_format: Mask R-CNN's masks: "bitmask", (D, H, W) bool arrays (detectron2's
            `pred_masks`), or "rle", D COCO RLEs ({"size": [H, W], "counts": str}, as
            pycocotools encodes them: `pycocotools.mask.decode` reads one back), each
            encoded from its box region, so that a large photo's masks never stand at full
            size at once (100 masks of a 6000 x 4000 photo: 2.4 GB as bitmasks); except from
            a graph exported with pasted masks, which gives them all at full size.

    Attributes:
        model: the `GeneralizedRCNN`, in eval mode; for `.onnx` weights the `OnnxDetector`
            that runs the graph (called alike, without the module's parts).
        class_names: name of each contiguous label.
        category_ids: dataset category id of each contiguous label.
    """

    def __init__(self, config: str | os.PathLike | Mapping[str, Any] | DictConfig | None = None,
                 *, weights: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                 device: str | torch.device = "cpu", release_memory: bool = True,
                 mask_format: str = "bitmask", input_format: str = "RGB") -> None:
        self.input_format = check_input_format(input_format)
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS)}, got "
                             f"{mask_format!r}")
        device = usable_device(device)
        loaded = load_detector(config, weights=weights, overrides=overrides, device=device)
        self.release_memory = release_memory
        self.mask_format = mask_format
        self.model = loaded.model
        self.cfg = loaded.cfg
        self.class_names = loaded.class_names
        self.category_ids = loaded.category_ids
        self._id_to_name = dict(zip(self.category_ids, self.class_names))
        min_size, max_size = test_resize(self.cfg)
        self.transform = build_transforms(min_size=min_size, max_size=max_size, with_boxes=False)
        self.tta = None if is_onnx(weights) else tta_from_config(self.cfg)
        self.tiles = tiles_from_config(self.cfg)
        self.device = torch.device(device)
        compile_for_inference(self.model, self.cfg, self.device, weights)

    @property
    def score_thresh(self) -> float:
        """The score a detection must exceed to be returned (`model.roi_heads.score_thresh`);
        set it to change it. An exported graph's can only rise above its export's: its own
        NMS ran at that one."""
        if isinstance(self.model, OnnxDetector):
            return float(self.cfg.model.roi_heads.score_thresh)
        return float(self.model.roi_heads.box_predictor.score_thresh)

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
            raise ValueError(f"score_thresh must be a number in [0, 1), got {value!r}")
        if isinstance(self.model, OnnxDetector):  # (its own threshold is the least it takes)
            self.model.score_thresh = float(value)
        else:
            self.model.roi_heads.box_predictor.score_thresh = float(value)
        self.cfg.model.roi_heads.score_thresh = float(value)

    def name_of(self, category_id: int) -> str:
        """Class name of a dataset category id."""
        return self._id_to_name.get(int(category_id), str(category_id))

    def __call__(self, image: np.ndarray) -> dict[str, Any]:
        """Detect objects in one image.

        Args:
            image: (H, W, 3) uint8 in `input_format` (RGB by default), or an image file's
                path.

        Returns:
            {"boxes": float32 (D, 4) xyxy in `image` pixels, "scores": float32 (D,),
            "labels": int64 (D,) dataset category ids, "class_names": D names}, and for
            Mask R-CNN "masks": bool (D, H, W) in `image` pixels (a list of D COCO RLEs
            with `mask_format="rle"`).
        """
        return self._predict([predictor_image(image, self.input_format)])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """Detect objects in several images at once: one batch through the PyTorch network,
        which a GPU runs faster than the images one by one (an exported ONNX model runs them
        one by one). Each image is resized on its own, then padded to the largest in the
        batch, as detectron2's and torchvision's batches are: images of one size get their
        own calls' detections; of several sizes, the padding changes the features near each
        image's edges, and through the proposals and NMS the detections can change anywhere.
        With test-time augmentation (the `test` section) the images run one by one; with
        tiles (`test.tiles`) the images run one by one, each one's tiles in batches.

        Args:
            images: what `__call__` takes, several (a sequence, or an (N, H, W, 3) array).

        Returns:
            Per image what `__call__` returns.
        """
        return self._predict(predictor_images(images, self.input_format))

    @torch.no_grad()
    def _predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        if not images:
            return []
        pasted = self.mask_format == "bitmask"
        if self.tiles is not None:
            outs = [self.tiles(self.model, image, pasted=pasted) for image in images]
        elif self.tta is not None:  # views of several sizes per image: one image at a time
            outs = [self.tta(self.model, image, pasted=pasted) for image in images]
        else:
            tensors = [torch.from_numpy(np.ascontiguousarray(
                self.transform(image=image)["image"].transpose(2, 0, 1))).to(self.device)
                for image in images]
            outs = self.model.inference(tensors, output_sizes=[image.shape[:2]
                                                               for image in images],
                                        pasted=pasted)
            del tensors
        results = [self._result(out, image.shape[:2]) for out, image in zip(outs, images)]
        del outs
        if self.release_memory and self.device.type == "cpu":
            release_free_memory()
        return results

    def _result(self, out: dict[str, torch.Tensor], image_size: tuple[int, int]
                ) -> dict[str, Any]:
        labels = np.asarray(self.category_ids, dtype=np.int64)[out["labels"].cpu().numpy()]
        result = {"boxes": out["boxes"].float().cpu().numpy(),
                  "scores": out["scores"].float().cpu().numpy(),
                  "labels": labels,
                  "class_names": [self.name_of(c) for c in labels]}
        if self.mask_format == "rle" and self.model.mask_on:
            result["masks"] = list(mask_rles(out, image_size,
                                             threshold=self.model.mask_threshold))
        elif "masks" in out:
            result["masks"] = out["masks"].cpu().numpy()
        return result


def warn_of_classes_not_chosen(cfg: Mapping[str, Any], class_names: Sequence[str],
                               what: str) -> None:
    """data.classes other than the weights' classes, given to a tool that `what` (draws,
    exports) what the weights predict: not used, said (it chooses what a training learns and
    tools/eval.py scores)."""
    chosen = (cfg.get("data") or {}).get("classes")
    if chosen and sorted(map(str, chosen)) != sorted(map(str, class_names)):
        logger.warning("data.classes %s is not used here: this tool %s the weights' %d "
                       "classes %s (data.classes chooses what a training learns and "
                       "tools/eval.py scores)", as_override(chosen), what, len(class_names),
                       brief(list(class_names), 10))


def build_renderer(config: str | os.PathLike | None, weights: str | os.PathLike,
                   overrides: Sequence[str] = (), min_score: float = 0.5, *,
                   device: str | torch.device = "cpu") -> Renderer:
    """RGB image -> RGB picture of its detections scoring at least `min_score` (tools/demo.py).

    The model's own score threshold becomes `min_score` (detectron2's demo does the same): a
    lower `min_score` shows detections the config's threshold would drop, a higher one spares
    pasting masks that are not drawn. An exported graph keeps its own threshold where that is
    higher (the config file's, above `min_score`, was applied to its output: a lower one drew
    nothing more); a threshold given among `overrides` is the threshold."""
    if not is_onnx(weights):
        overrides = [f"model.roi_heads.score_thresh={min_score}", *overrides]
    predictor = Predictor(config, weights=weights, overrides=overrides, device=device,
                          mask_format="rle")
    given = any(o.split("=", 1)[0] == "model.roi_heads.score_thresh" for o in overrides)
    if is_onnx(weights) and not given:
        graph = predictor.model.metadata.get("score_thresh")
        floor = max(min_score, float(graph) if graph is not None else 0.0)
        predictor.model.score_thresh = floor
        predictor.cfg.model.roi_heads.score_thresh = floor
    warn_of_classes_not_chosen(predictor.cfg, predictor.class_names, "draws")
    if predictor.tiles is not None:  # (a pass per tile: said, as tools/eval.py says it)
        logger.info("sliced inference: %s", describe_tiles(predictor.tiles, predictor.model))
    elif predictor.tta is not None:
        logger.info("test-time augmentation: %s", describe_tta(predictor.tta))
    rgb = palette(len(predictor.category_ids))
    colours = {cid: tuple(int(v) for v in rgb[i]) for i, cid in enumerate(predictor.category_ids)}
    return DetectionRenderer(predictor, colours, min_score)


class DetectionRenderer:
    """A Renderer that counts the detections it draws (`drawn`): tools/demo.py says when a
    run drew none. `predict` and `draw` are its two halves, `as_json` what it draws as JSON
    (tools/demo.py --save-json)."""

    def __init__(self, predictor: Predictor, colours: dict[int, tuple[int, int, int]],
                 min_score: float) -> None:
        self.predictor, self.colours, self.min_score = predictor, colours, min_score
        self.drawn = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.draw(image, self.predict(image))

    def predict(self, image: np.ndarray) -> dict[str, Any]:
        return self.predictor(image)

    def draw(self, image: np.ndarray, detections: dict[str, Any]) -> np.ndarray:
        self.drawn += int((np.asarray(detections["scores"]) >= self.min_score).sum())
        return draw_detections(image, detections, self.colours, self.min_score)

    def as_json(self, detections: dict[str, Any]) -> dict[str, Any]:
        """The detections scoring `min_score` or more (those drawn): "boxes" [[x1, y1, x2,
        y2], ...] in the image's pixels, "scores", "class_names", "category_ids"
        and, for Mask R-CNN, "masks" as COCO RLEs ({"size": [H, W], "counts": str})."""
        shown = np.flatnonzero(np.asarray(detections["scores"]) >= self.min_score)
        record = {"boxes": [[float(v) for v in detections["boxes"][i]] for i in shown],
                  "scores": [float(detections["scores"][i]) for i in shown],
                  "class_names": [detections["class_names"][i] for i in shown],
                  "category_ids": [int(detections["labels"][i]) for i in shown]}
        if "masks" in detections:
            masks = detections["masks"]
            record["masks"] = [masks[i] if isinstance(masks[i], dict) else mask_to_rle(masks[i])
                               for i in shown]
        return record
