"""Predictor: one RGB uint8 (H, W, 3) image in, an (H, W) class-id map out.

The model is built from a config (a YAML path or a loaded config) and, optionally, weights
(an own checkpoint, whose provenance supplies the class names and the pixel mean/std the
weights expect, or a torchvision DeepLabV3/FCN state dict).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from resnet_detect.engine import to_plain
from resnet_detect.engine.amp import float32_default
from resnet_detect.engine.compilation import compile_for_inference
from resnet_detect.engine.config import ConfigError, as_override, config_needed
from resnet_detect.backbones.model_weights import use_recorded_normalisation
from resnet_detect.backbones.weights import (foreign_checkpoint_hint, read_checkpoint,
                                            refuse_other_task, unwrap_state_dict)
from resnet_detect.engine.data import check_input_format, predictor_image, predictor_images
from resnet_detect.engine.distributed import usable_device
from resnet_detect.engine.host_memory import release_free_memory
from resnet_detect.engine.memory_format import place_model
from resnet_detect.engine.export import ExportError, is_onnx, warn_of_settings_the_graph_keeps
from resnet_detect.engine.visualize import Renderer, draw_segmentation

from .build import build_model, config_from_mapping, load_config
from .convert import load_segmentation_weights, weight_bound_settings
from .data import overlay_colours, resolve_class_names
from .export import OnnxSegmentor
from .inference import TTAInference, tta_from_config

_PREDICTOR_KEYS = ("head.predictor.weight", "classifier.4.weight")
LARGE_IMAGE_PIXELS = 4_000_000  # test.max_size is suggested above this
logger = logging.getLogger(__name__)


def _num_classes_of(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    for key in _PREDICTOR_KEYS:
        if key in state_dict:
            return int(state_dict[key].shape[0])
    return None


def _config(config: str | os.PathLike | DictConfig | Mapping[str, Any],
            overrides: Sequence[str]) -> DictConfig:
    if isinstance(config, (str, os.PathLike)):
        return load_config(config, overrides)
    return config_from_mapping(config, overrides, source="the config given to Predictor")


def placeholder_names(num_classes: int) -> list[str]:
    """class_0.. : the names of classes nothing names (weights and config without names)."""
    return [f"class_{i}" for i in range(num_classes)]


def _configured_names(cfg: DictConfig, num_classes: int, source: str | None
                      ) -> list[str] | None:
    """data.class_names of weights that record no names; None when the config has none."""
    if not cfg.data.class_names:
        return None
    names = resolve_class_names({"data": {"class_names": cfg.data.class_names},
                                 "model": {"num_classes": None}})
    if len(names) != num_classes:
        raise ConfigError(f"the weights {source} have {num_classes} classes, data.class_names "
                          f"names {len(names)}")
    return names


class Predictor:
    """`Predictor(config, weights=..., overrides=[...])(rgb_uint8_hxwx3 or a path)` ->
    `{"mask": (H, W)}`.

    Args:
        config: YAML path, or a loaded config; None takes the config the weights record.
        weights: whole-segmenter weights, or an exported `.onnx` (or its folder; run by ONNX
            Runtime); None uses `model.weights` of the config.
        overrides: `key=value` config overrides.
        device: where the model runs ("cpu", "cuda", ...).
        tta: test-time inference; None takes the config's `test` section.
        release_memory: after each prediction on the CPU, hand the memory freed by it back
            to the system (`engine.host_memory.release_free_memory`), so that a long-running
            service fed images of many sizes keeps its size; False keeps that memory for the
            next call, which then page-faults less (BENCHMARKS.md, "A Predictor in a
            long-running process").
        compiled: compile the model as `test.compile` says; False keeps it eager (an
            export traces the eager model).
        input_format: the channel order of the arrays given, "RGB" or "BGR" (OpenCV's
            `cv2.imread`, mmsegmentation's default); a path given is read as it should be
            either way.

    Attributes:
        class_names: name of every class id (checkpoint provenance, else class_0..).
        names_recorded: whether the weights named the classes (an export, or a checkpoint of
            this project's).
        model: the `SemanticSegmentor`, in eval mode; for `.onnx` weights the
            `OnnxSegmentor` that runs the graph (called alike, without the module's parts).
        trained_reduce_zero_label: the data.reduce_zero_label the weights were trained with
            (None where they do not record it).
    """

    def __init__(self, config: str | os.PathLike | DictConfig | Mapping[str, Any] | None = None,
                 *, weights: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                 device: str | torch.device = "cpu", tta: TTAInference | None = None,
                 release_memory: bool = True, compiled: bool = True,
                 input_format: str = "RGB") -> None:
        self.input_format = check_input_format(input_format)
        device = usable_device(device)
        self._warned = False  # of a large image run whole
        self.release_memory = release_memory
        if is_onnx(weights):
            self._init_onnx(config, weights, overrides, device, tta)
            return
        source = str(weights) if weights is not None else None
        checkpoint = read_checkpoint(weights) if weights is not None else None
        state_dict, provenance = unwrap_state_dict(checkpoint) if checkpoint else ({}, None)
        provenance = provenance or {}
        refuse_other_task(str(source), provenance, "sem_seg", state_dict)
        if config is None:
            if weights is None:  # (nothing to read a config from)
                raise ConfigError("no segmenter weights: pass weights=PATH (and a config, "
                                  "unless the weights record theirs)")
            if not isinstance(provenance.get("config"), Mapping):
                raise config_needed(weights)
            cfg = config_from_mapping(provenance["config"], overrides)
        else:
            cfg = _config(config, overrides)
        if checkpoint is None and cfg.model.weights:  # same handling as weights=...
            source = str(cfg.model.weights)
            checkpoint = read_checkpoint(source)
            state_dict, provenance = unwrap_state_dict(checkpoint)
            provenance = provenance or {}
            refuse_other_task(source, provenance, "sem_seg", state_dict)
        if checkpoint is None:  # (the backbone's weights alone leave the head random)
            raise ConfigError("no segmenter weights: pass weights=PATH (or set model.weights)")
        cfg.model.weights = None
        cfg.model.backbone.weights = None  # replaced by the full weights anyway
        # only training uses the aux head: weights with or without one (torchvision's
        # aux_loss=False) predict alike
        cfg.model.aux_head.enabled = False
        if cfg.model.num_classes is None:
            names = provenance.get("class_names") or []
            cfg.model.num_classes = len(names) or _num_classes_of(state_dict)
        if cfg.model.num_classes is None:
            raise ConfigError(f"{source}: no segmentation predictor ({_PREDICTOR_KEYS[0]}) in "
                              f"the weights" + foreign_checkpoint_hint(state_dict))
        use_recorded_normalisation(cfg.model, provenance, str(source))
        self.model_config = to_plain(cfg.model)  # what an export records
        # its random start, replaced, is not the user's; float32 whatever the default dtype
        with torch.random.fork_rng(devices=[]), float32_default():
            self.model = build_model(cfg)
        load_segmentation_weights(self.model, checkpoint, weight_bound_settings(cfg.model),
                                  source=source, inference=True, model_config=cfg.model)
        place_model(self.model, device, cfg.model.channels_last).eval()
        if compiled:
            compile_for_inference(self.model, cfg, device)
        names = provenance.get("class_names") or []
        self.names_recorded = len(names) == self.model.num_classes
        if not self.names_recorded:  # torchvision's weights: the config's names, if it has any
            names = (_configured_names(cfg, self.model.num_classes, source)
                     or placeholder_names(self.model.num_classes))
        elif any(o.split("=", 1)[0] == "data.class_names" for o in overrides):
            given = _configured_names(cfg, self.model.num_classes, source)
            if given is not None and given != list(names):  # (tools/eval.py refuses their data)
                logger.warning("the weights %s name their classes %s: predictions carry "
                               "those names, not data.class_names' (tools/eval.py refuses "
                               "data named otherwise)", source, list(names)[:10])
        self.class_names = list(names)
        # the config's colours, else those the training recorded for the weights' classes
        # (as an export's are); checked where drawn: eval and export ignore them
        recorded = ((provenance.get("config") or {}).get("data") or {}).get("palette")
        self.palette = cfg.data.get("palette") or (recorded if self.names_recorded else None)
        self.trained_reduce_zero_label = ((provenance.get("config") or {}).get("data")
                                          or {}).get("reduce_zero_label")
        self.tta = tta or tta_from_config(cfg)
        if tta is None and isinstance(provenance.get("config"), Mapping):
            _warn_of_other_test_settings(self.tta, provenance["config"], source)
        self.device = torch.device(device)

    def _init_onnx(self, config: str | os.PathLike | DictConfig | Mapping[str, Any] | None,
                   weights: str | os.PathLike, overrides: Sequence[str],
                   device: str | torch.device, tta: TTAInference | None) -> None:
        """An exported graph (tools/export.py) run by ONNX Runtime: the test scale and size
        cap it was exported with; a config, override or `tta` asking for another is warned of,
        one asking for several views (scales, flip, windows) refused, and `model.*` overrides
        (the graph's own) are named as not applied."""
        self.model = OnnxSegmentor(weights, device)
        self.model_config = self.model.metadata.get("model_config")
        self.class_names = self.model.class_names
        self.names_recorded = True
        self.trained_reduce_zero_label = self.model.metadata.get("reduce_zero_label")
        self.tta = TTAInference()  # the graph itself rescales by its test scale and cap
        overridden = [o.split("=", 1)[0] for o in overrides]
        # without a config, the overrides alone are the user's (not the defaults under them)
        compared = {key for key in ("test.scales", "test.flip", "test.window", "test.max_size")
                    if tta is not None or config is not None or key in overridden}
        cfg = _config({} if config is None else config, overrides)
        # the config's colours, else those recorded at export
        self.palette = cfg.data.get("palette") or self.model.metadata.get("palette")
        asked = tta or tta_from_config(cfg)
        graph = (self.model.test_scale, self.model.test_max_size)
        if compared - {"test.max_size"} and asked.single_scale is None:
            raise ExportError(
                f"{weights} runs one test scale, {graph[0]}, with test.max_size "
                f"{as_override(graph[1])}, without flip or windows; the config asks for "
                f"test.scales={as_override(asked.scales)} test.flip={as_override(asked.flip)} "
                f"test.window={as_override(asked.window)}: set "
                f"test.scales=[{graph[0]}] test.flip=false test.window=null (an export runs "
                f"one scale without flip or windows; give the .pth for test-time "
                f"augmentation)")
        differing = [f"{key} {as_override(exported)} (config: {as_override(config_value)})"
                     for key, exported, config_value in (
                         ("test.scales", [graph[0]], list(asked.scales)),
                         ("test.max_size", graph[1], asked.max_size))
                     if key in compared and exported != config_value]
        warn_of_settings_the_graph_keeps(weights, differing, overrides,
                                         recorded=self.model.metadata.get("model_config"))
        compile_for_inference(self.model, cfg, device, weights)
        self.device = torch.device(device)

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Segment one image.

        Args:
            image: (H, W, 3) uint8 in `input_format` (RGB by default), or an image file's
                path.

        Returns:
            {"mask": (H, W) int64 class ids}.
        """
        return self._predict([predictor_image(image, self.input_format)])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Segment several images: a batch through the PyTorch network per image size (which
        a GPU runs faster than one by one), so that each image gets its own call's classes
        (padded to a larger image, a third of a small one's pixels changed: ASPP's dilations
        and image pooling reach across the padding). With test-time augmentation (several
        scales, flip, windows) or an exported ONNX model the images run one by one.

        Args:
            images: what `__call__` takes, several (a sequence, or an (N, H, W, 3) array).

        Returns:
            Per image what `__call__` returns.
        """
        return self._predict(predictor_images(images, self.input_format))

    @torch.no_grad()
    def _predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        for image in images:
            self._warn_of_a_large_image(image)
        # copies (not views, which a read-only array would make torch warn of)
        tensors = [torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C")).to(
            self.device) for image in images]
        if not self.tta.is_plain:
            masks = [self.tta.class_map(self.model, tensor) for tensor in tensors]
        else:  # an ONNX model runs each list one by one
            of_size: dict[tuple[int, ...], list[int]] = {}
            for i, tensor in enumerate(tensors):
                of_size.setdefault(tuple(tensor.shape), []).append(i)
            masks = [None] * len(tensors)
            for indices in of_size.values():
                for i, out in zip(indices, self.model([tensors[i] for i in indices])):
                    masks[i] = out["mask"]
        results = [{"mask": mask.cpu().numpy().astype(np.int64, copy=False)} for mask in masks]
        del tensors, masks
        if self.release_memory and self.device.type == "cpu":
            release_free_memory()
        return results

    def _warn_of_a_large_image(self, image: np.ndarray) -> None:
        capped = (self.model.test_max_size if isinstance(self.model, OnnxSegmentor)
                  else self.tta.max_size)  # an export caps as it was exported
        if (not self._warned and capped is None and self.tta.window is None
                and image.shape[0] * image.shape[1] > LARGE_IMAGE_PIXELS):
            self._warned = True
            logger.warning("a %dx%d image runs whole (test.max_size is null): memory and time "
                           "grow with its pixels times the classes; test.max_size=2048 caps "
                           "its longer side", image.shape[1], image.shape[0])


def _settings(tta: TTAInference) -> tuple[Any, ...]:
    return tta.scales, tta.flip, tta.window, tta.stride, tta.max_size


def _warn_of_other_test_settings(tta: TTAInference, recorded: Mapping[str, Any],
                                 source: str | None) -> None:
    """A config whose test section is not the one the weights were evaluated with in
    training (e.g. a model trained on half-size images tested at full size)."""
    try:
        trained = tta_from_config(recorded)
    except (KeyError, TypeError, ValueError):  # an older or foreign record
        return
    if _settings(tta) != _settings(trained):
        logger.warning("%s records a config that tests with test.scales=%s test.flip=%s "
                       "test.window=%s test.max_size=%s (its evaluations in training); this "
                       "asks for %s %s %s %s: the results will differ. To test as trained, "
                       "give the run's config.yaml as the config (Predictor: config=None, "
                       "without test.* overrides); an ONNX export runs one scale without "
                       "flip or windows, unlike those evaluations: tools/eval.py scores the "
                       "export itself", source,
                       list(trained.scales), trained.flip, trained.window, trained.max_size,
                       list(tta.scales), tta.flip, tta.window, tta.max_size)


def build_renderer(config: str | os.PathLike | None, weights: str | os.PathLike,
                   overrides: Sequence[str] = (), min_score: float = 0.5, *,
                   device: str | torch.device = "cpu") -> Renderer:
    """RGB image -> RGB colour overlay of its class-id map with a legend (tools/demo.py);
    `min_score` is not used (every pixel gets a class)."""
    predictor = Predictor(config, weights=weights, overrides=overrides, device=device)
    tta = predictor.tta
    if not tta.is_plain:  # (a pass per view or window: said, as detection's demo says it)
        logger.info("inference: scales %s%s%s%s", list(tta.scales),
                    ", flipped too" if tta.flip else "",
                    f", windows {list(tta.window)} at stride {list(tta.stride)}"
                    if tta.window else "",
                    f", the longer side capped at {tta.max_size}" if tta.max_size else "")
    return SegmentationRenderer(predictor)


class SegmentationRenderer:
    """A Renderer whose two halves, `predict` (the (H, W) class-id map) and `draw`, tools/demo.py
    --save-json also calls apart."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.class_names = predictor.class_names
        self.colours = overlay_colours(predictor.palette, len(predictor.class_names))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.draw(image, self.predict(image))

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predictor(image)["mask"]

    def draw(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return draw_segmentation(image, mask, self.class_names, self.colours)
