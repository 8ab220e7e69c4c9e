"""A whole model's weights (a detector's, a segmenter's): an own checkpoint or torchvision's
state dict, recognised, converted, checked against the model's settings and loaded strictly,
the same way for every task. Each task describes its format once (`WholeModelFormat`)."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig
from torch import nn

from resnet_detect.engine.config import ConfigError, as_override, flat_keys, to_plain

from .resnet import ResNet
from .weights import (StateDict, check_and_load, fit_optional_head, open_weights,
                      other_resnet_hint, refuse_mismatched_settings, refuse_other_task,
                      resnet_arch)

logger = logging.getLogger(__name__)


def dilation_layout(backbone: Mapping[str, Any]) -> list[int] | None:
    """A `model.backbone` config's multi_grid as it changes the network: None where it
    changes nothing (unset, configs from before the key, or all ones at output stride 32;
    in a dilated last stage all ones dilate its first block too, which null does not)."""
    grid = backbone.get("multi_grid")
    if not grid or (backbone["output_stride"] == 32 and all(m == 1 for m in grid)):
        return None
    return list(grid)


class WholeModelFormat(NamedTuple):
    """How one task's whole-model weights are recognised, converted and checked.

    Attributes:
        task: the config's `task` value own checkpoints record ("detection", "sem_seg").
        is_torchvision: whether a state dict is torchvision's model of the task.
        convert_torchvision: torchvision's keys -> this project's.
        torchvision_settings: what torchvision's builders fixed, from its (unconverted) state
            dict (config key -> value).
        own_settings: what an own checkpoint's recorded `model` config implies.
        optional_head: key prefix of the head a model or its weights may lack (a Mask R-CNN's
            mask head, a segmenter's aux head): see `fit_optional_head`.
        class_layers: prefixes of the layers whose shapes follow model.num_classes.
        shape_hint: (model, converted state dict) -> what a config key to set would make of
            the mis-shaped tensors ("" where nothing: said beside them).
    """

    task: str
    is_torchvision: Callable[[Mapping[str, Any]], bool]
    convert_torchvision: Callable[[Mapping[str, torch.Tensor]], StateDict]
    torchvision_settings: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    own_settings: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    optional_head: str
    class_layers: tuple[str, ...]
    shape_hint: Callable[[nn.Module, Mapping[str, Any]], str] = lambda model, state_dict: ""


def load_whole_model_weights(model: nn.Module, weights: str | os.PathLike | Mapping[str, Any],
                             fmt: WholeModelFormat, settings: Mapping[str, Any] | None = None,
                             *, source: str | None = None, new_classes: bool = False,
                             unused_head: bool = False,
                             class_names: Sequence[str] | None = None,
                             model_config: Mapping[str, Any] | None = None
                             ) -> dict[str, Any] | None:
    """Load a whole model's weights strictly.

    Args:
        model: the model to fill.
        weights: a file path, or an already loaded checkpoint / state dict.
        fmt: the task's format.
        settings: the model's settings that change what its weights compute (config key ->
            value); weights trained or converted with other values are refused (what
            torchvision's builders fix, or what an own checkpoint's provenance config says).
        source: names the weights in messages (default: the path).
        new_classes: the layers of weights trained on another class count start from scratch
            (with a warning) instead of being refused: fine-tuning to other classes.
        unused_head: the model leaves out the optional head on purpose (a segmenter's aux
            head, for inference): the weights' copy is dropped without a warning.
        class_names: the classes the model is trained on (fine-tuning): weights trained on as
            many others, or the same in another order, are loaded with a warning naming both.
        model_config: the config's `model` section the model was built from: where the
            weights do not fit it, the keys in which the config they record differs are named.

    Returns:
        The checkpoint's provenance (None for torchvision's weights).

    Raises:
        ValueError: naming the source and every missing, unexpected or mis-shaped key, or
            every setting the weights do not fit.
    """
    state_dict, provenance, source = open_weights(weights, source)
    refuse_other_task(source, provenance, fmt.task, state_dict)
    implied = None
    if fmt.is_torchvision(state_dict):
        implied = fmt.torchvision_settings(state_dict)  # before its keys change
        try:
            state_dict = fmt.convert_torchvision(state_dict)
        except ValueError as e:  # torchvision's keys with others no layout has
            raise ConfigError(f"{source}: {e}") from None
    elif provenance and isinstance(provenance.get("config"), Mapping):
        implied = fmt.own_settings(provenance["config"]["model"])
    # weights of another network (R-50's for an R-18): their keys are named with the settings,
    # whose fix alone would only lead to the shapes
    settings_error = None
    if settings is not None and implied is not None:
        try:
            refuse_mismatched_settings(source, implied, settings, model)
        except ConfigError as e:
            if not _mis_shaped(model, state_dict, fmt):
                raise
            settings_error = e
    state_dict = fit_optional_head(model, state_dict, fmt.optional_head, source,
                                   start_afresh=new_classes, unused=unused_head)
    try:
        check_and_load(model, state_dict, source, _backbone_hint(model, state_dict, source)
                       + fmt.shape_hint(model, state_dict),
                       class_layers=fmt.class_layers if new_classes else ())
    except ConfigError as e:
        recorded = _recorded_differences(provenance, model_config, new_classes)
        if settings_error is None and not recorded:
            raise
        raise ConfigError(f"{e}{recorded}" + (f"\n  and the settings: {settings_error}"
                                             if settings_error is not None else "")) from None
    if settings_error is not None:
        raise settings_error
    if class_names is not None and provenance:
        warn_of_renamed_classes(source, provenance.get("class_names"), class_names)
    if not any(p.is_meta for p in model.parameters()):  # (not the check before the data)
        logger.info("loaded the weights of %s", source)
    return provenance


# where a C4 detector's RoI head holds the backbone's res5
C4_RES5 = "roi_heads.res5."


MAX_DIFFERENCES = 8
# model keys that shape no tensor (test-time and sampling numbers, losses, normalisation,
# the weights' own paths): left out of what the weights' recorded config is said to differ in
SHAPE_FREE = (".weights", "score_thresh", "nms_thresh", "detections_per_image",
              "batch_size_per_image", "positive_fraction", "_topk_train", "_topk_test",
              "min_box_size", "mask_threshold", "loss_weight", "pixel_mean", "pixel_std",
              "channels_last", "ignore_index", "class_weight", "smooth_l1_beta",
              "mask_rois_per_image")


def _recorded_differences(provenance: Mapping[str, Any] | None,
                          model_config: Mapping[str, Any] | None, new_classes: bool) -> str:
    """Where the weights record their config: its `model` keys that differ from
    `model_config`'s (the tensors' shapes follow some of them), as a line; else ""."""
    recorded = (provenance or {}).get("config")
    if model_config is None or not isinstance(recorded, Mapping) or not isinstance(
            recorded.get("model"), Mapping):
        return ""
    if isinstance(model_config, DictConfig):
        model_config = to_plain(model_config)
    theirs, ours = flat_keys(recorded["model"], "model."), flat_keys(model_config, "model.")
    differing = [key for key in sorted(theirs.keys() & ours.keys())
                 if theirs[key] != ours[key] and not key.endswith(SHAPE_FREE)
                 and not (new_classes and key == "model.num_classes")]
    if not differing:
        return ""
    shown = ", ".join(f"{key} {as_override(theirs[key])} (here {as_override(ours[key])})"
                      for key in differing[:MAX_DIFFERENCES])
    more = f" and {len(differing) - MAX_DIFFERENCES} more" if len(differing) > MAX_DIFFERENCES \
        else ""
    return (f"\n  the config the weights record differs from this one in {shown}{more}: give "
            f"their run's config.yaml, or set those keys")


def _backbone_hint(model: nn.Module, state_dict: Mapping[str, Any], source: str) -> str:
    """Where the weights' ResNet backbone is another net than the model's: both named."""
    prefix = next((f"{name}." for name, module in model.named_modules()
                   if isinstance(module, ResNet)), None)
    if prefix is None:
        return ""

    def backbone(weights: Mapping[str, Any]) -> dict[str, Any]:
        return {**{k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)},
                **{"res5." + k[len(C4_RES5):]: v for k, v in weights.items()
                   if k.startswith(C4_RES5)}}
    return other_resnet_hint(source, resnet_arch(backbone(state_dict)),
                             resnet_arch(backbone(model.state_dict())), whole=True)


def warn_of_renamed_classes(source: str, recorded: Sequence[str] | None,
                            class_names: Sequence[str]) -> None:
    """Weights trained on as many classes as `class_names`, under other names, keep each
    classifier row's training under its new name: said, not refused (fine-tuning to new
    classes of the same number is legitimate; detectron2 and mmdetection say nothing)."""
    recorded = [str(n) for n in recorded or ()]
    names = [str(n) for n in class_names]
    placeholders = [f"class_{i}" for i in range(len(names))]  # classes nothing named
    if len(recorded) != len(names) or recorded == names or placeholders in (recorded, names):
        return
    renamed = [f"{i} {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(recorded, names)) if a != b]
    if sorted(recorded) == sorted(names):
        logger.warning("%s was trained on the same %d classes in another order: class %s keeps "
                       "what it learnt as the other class (reorder data.class_names or the "
                       "categories to the weights' order to keep it)", source, len(names),
                       ", ".join(renamed[:5]) + (", ..." if len(renamed) > 5 else ""))
    else:
        logger.warning("%s was trained on %d other classes: the classifiers start from theirs, "
                       "each under a new name (%s)", source, len(names),
                       ", ".join(renamed[:5]) + (", ..." if len(renamed) > 5 else ""))


def use_recorded_normalisation(model_cfg: Any, provenance: Mapping[str, Any],
                               source: str) -> None:
    """Set model.pixel_mean / pixel_std to those the weights `source` were trained with (its
    provenance), saying so where the config asked for others (they were dropped silently)."""
    for key in ("pixel_mean", "pixel_std"):
        if not provenance.get(key):
            continue
        recorded = [float(v) for v in provenance[key]]
        asked = None if model_cfg[key] is None else [float(v) for v in model_cfg[key]]
        if asked not in (None, recorded):
            logger.warning("model.%s %s is not applied: %s was trained on images normalised "
                           "with %s, which it keeps", key, asked, source, recorded)
        model_cfg[key] = list(provenance[key])


def _mis_shaped(model: nn.Module, state_dict: Mapping[str, Any], fmt: WholeModelFormat) -> bool:
    """Whether a tensor the model and the weights both name differs in shape, outside the
    class-dependent layers (another class count is the settings' and fine-tuning's matter)."""
    expected = model.state_dict()
    return any(key in expected and not key.startswith(fmt.class_layers)
               and tuple(getattr(value, "shape", ())) != tuple(expected[key].shape)
               for key, value in state_dict.items())


ResumedModelCheck = Callable[[str, Mapping[str, Any], Mapping[str, Any], nn.Module], None]


def resumed_model_check(fmt: WholeModelFormat) -> ResumedModelCheck:
    """A task's `check_resumed_model(source, recorded config, configured config, model)`:
    the settings no tensor shape shows (anchors, strides, normalisation) must be those the
    checkpoint's weights were trained with."""
    def check(source: str, recorded: Mapping[str, Any], configured: Mapping[str, Any],
              model: nn.Module) -> None:
        refuse_mismatched_settings(source, fmt.own_settings(recorded["model"]),
                                   fmt.own_settings(configured["model"]), model)
    return check
