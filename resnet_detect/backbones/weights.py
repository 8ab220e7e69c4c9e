"""Backbone weights: read, convert and strictly load torchvision, timm and own checkpoints.

Own checkpoints are `{"model": state_dict, "provenance": {...}}` where provenance records the
architecture and how its inputs must be preprocessed (see `make_provenance`).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import safetensors.torch
import torch
from torch import nn

from resnet_detect.engine.checkpoint import (UnreadableCheckpointError, key_listing,
                                              key_mismatches)
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.files import (atomic_save, check_weights_file, read_checked_bytes,
                                        why_unloadable)

from .classifier import Classifier
from .layers import ZeroPadShortcut
from .registry import list_models
from .resnet import Bottleneck, ResNet

logger = logging.getLogger(__name__)

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
StateDict = dict[str, torch.Tensor]


def make_provenance(arch: str, options: Mapping[str, Any] | None = None, *,
                    class_names: list[str] | None = None, config: Any = None,
                    pixel_mean: tuple[float, ...] = PIXEL_MEAN,
                    pixel_std: tuple[float, ...] = PIXEL_STD) -> dict[str, Any]:
    """What a checkpoint must say so a model built from it preprocesses the right way."""
    options = dict(options or {})
    return {"arch": arch, "options": options, "pixel_mean": list(pixel_mean),
            "pixel_std": list(pixel_std), "channel_order": "RGB",
            "stride_in_1x1": bool(options.get("stride_in_1x1", False)),
            "class_names": list(class_names or []), "config": config}


def save_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor],
                    provenance: Mapping[str, Any], **extra: Any) -> None:
    """Write `{"model", "provenance", **extra}` atomically (temp file, then rename), with
    its SHA-256 beside it (`read_checkpoint` refuses the file once damaged); NCHW tensors
    whatever the model's layout (model.channels_last)."""
    payload = {"model": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
               "provenance": dict(provenance), **extra}
    atomic_save(payload, path, checksum=True)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load with weights_only=True (or a `.safetensors` file's tensors), of bytes that
    match the file's `.sha256` where it has one (training checkpoints); any failure names the
    file. The `args` of timm's and torchvision's training scripts (an argparse.Namespace)
    may be in the file."""
    path = check_weights_file(path)
    if str(path).endswith(".safetensors"):
        try:
            return safetensors.torch.load(read_checked_bytes(path))
        except Exception as e:
            raise UnreadableCheckpointError(
                f"cannot read weights file {path} as safetensors: {type(e).__name__}: {e}"
            ) from e
    try:
        data = read_checked_bytes(path)
    except ValueError as e:  # damaged since it was written (its .sha256)
        raise UnreadableCheckpointError(f"cannot read weights file {path}: {e}") from e
    except OSError as e:  # no permission, a folder, a disk error
        raise UnreadableCheckpointError(
            f"cannot read weights file {path}: {type(e).__name__}: {e.strerror or e}") from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # torch doubts a plain pickle's protocol in a warning: a file it then reads is
            # fine, one it cannot is refused below, saying why (detectron2's .pkl)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, text, a pickled object ...
        raise UnreadableCheckpointError(
            f"cannot read weights file {path}: {why_unloadable(data, e)}") from e
    if not isinstance(obj, dict):
        raise UnreadableCheckpointError(
            f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    return obj


# where checkpoints keep their weights: an average of them first (timm's train.py,
# torchvision's references with --model-ema), as timm's load_checkpoint reads them
AVERAGED_WEIGHTS = ("state_dict_ema", "model_ema")
WEIGHTS = ("model", "state_dict", "model_state")
WRAPPERS = ("module.", "_orig_mod.")  # DistributedDataParallel's, torch.compile's


def weights_entry(obj: Mapping[str, Any]) -> str | None:
    """The key of a checkpoint that holds its weights (None: the checkpoint is them)."""
    return next((k for k in (*AVERAGED_WEIGHTS, *WEIGHTS) if isinstance(obj.get(k), Mapping)),
                None)


def unwrap_state_dict(obj: Mapping[str, Any]) -> tuple[StateDict, dict[str, Any] | None]:
    """Return (state_dict, provenance or None) from an own, timm, torchvision-reference or
    bare checkpoint; keys saved through a DDP or compiled module lose that prefix."""
    key = weights_entry(obj)
    if key is None:
        return _unwrapped_keys(dict(obj)), None
    return _unwrapped_keys(dict(obj[key])), obj.get("provenance")


def _unwrapped_keys(state_dict: StateDict) -> StateDict:
    if "n_averaged" in state_dict and all(k.startswith("module.") for k in state_dict
                                          if k != "n_averaged"):
        del state_dict["n_averaged"]  # torch.optim.swa_utils.AveragedModel's count
    while state_dict:  # wrappers in either nesting (compiled DDP, DDP of a compiled model)
        prefix = next((p for p in WRAPPERS if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def classifier_checkpoint(weights: str | os.PathLike, use: str,
                          error: type[ValueError] = ConfigError) -> tuple[int, dict[str, Any]]:
    """(number of classes, provenance or {}) of whole-classifier weights (tools/pretrain.py's
    model_final.pth, torchvision's or timm's); `error` naming them, and saying what to `use`
    instead, for a backbone without its fc."""
    state_dict, provenance = unwrap_state_dict(read_checkpoint(weights))
    fc = state_dict.get("fc.weight", state_dict.get("head.fc.weight"))
    if fc is None:
        try:  # a detector's or segmenter's: said so, not "a backbone"
            refuse_other_task(str(weights), provenance, "classification", state_dict)
        except ConfigError as e:
            raise error(f"{e}: {use} a model_final.pth of tools/pretrain.py") from None
        raise error(f"{weights} holds no classifier (no fc.weight): {use} a model_final.pth of "
                    f"tools/pretrain.py, not a backbone")
    return int(fc.shape[0]), provenance or {}


def open_weights(weights: str | os.PathLike | Mapping[str, Any], source: str | None = None
                 ) -> tuple[StateDict, dict[str, Any] | None, str]:
    """(state dict, provenance or None, source) of a weights file or an already loaded
    checkpoint / state dict; `source` names them in messages (default: the path)."""
    is_path = isinstance(weights, (str, os.PathLike))
    if source is None:
        source = str(weights) if is_path else "the given state dict"
    checkpoint = read_checkpoint(weights) if is_path else weights
    entry = weights_entry(checkpoint)
    if entry in AVERAGED_WEIGHTS:
        logger.info("%s: reading the average of the weights (%r) it holds", source, entry)
    state_dict, provenance = unwrap_state_dict(checkpoint)
    return state_dict, provenance, source


_TV_BN = re.compile(r"(^|\.)bn(\d)\.")


def convert_torchvision_resnet(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Map torchvision/timm ResNet keys (conv1, bn1, layerK, downsample) to ours.

    conv1.* -> stem.conv.*, bn1.* -> stem.norm.*, layerK.J.bnI -> res{K+1}.J.normI,
    downsample.{0,1} -> shortcut.{0,1}; other keys (fc.*) are kept.
    """
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("conv1."):
            key = "stem.conv." + key[len("conv1."):]
        elif key.startswith("bn1."):
            key = "stem.norm." + key[len("bn1."):]
        elif key.startswith("layer"):
            stage, rest = key[len("layer"):].split(".", 1)
            rest = _TV_BN.sub(r"\1norm\2.", rest).replace("downsample.", "shortcut.")
            key = f"res{int(stage) + 1}.{rest}"
        converted[key] = value
    return converted


_OUR_NORM = re.compile(r"(^|\.)norm(\d)\.")


def torchvision_resnet_state_dict(model: nn.Module) -> StateDict:
    """The weights of this project's ResNet or Classifier under the key names of
    torchvision's and timm's ResNets (convert_torchvision_resnet's inverse):
    `torchvision.models.resnet50(num_classes=K).load_state_dict(...)` (timm's
    `resnet50d` for a resnet50d: deep stem and average-pooling shortcuts) then computes the
    same logits; a dilated bottleneck net's with torchvision's `replace_stride_with_dilation`
    (timm's `output_stride`), a GroupNorm net's with `norm_layer=partial(nn.GroupNorm, 32)`.
    A bare backbone's have no `fc.*` (load them with strict=False).

    Raises:
        ValueError: a net that no torchvision or timm ResNet computes (a CIFAR stem, shortcut
            option A or C, no shortcuts, strides in the 1x1 convs, multi_grid, dilated basic
            blocks, a lesioned block), or one whose stages are not all there (a detector's
            C4 backbone, whose res5 is its box head's); its keys would load there and compute
            something else, or leave layers at their initial values.
    """
    backbone = model.backbone if isinstance(model, Classifier) else model
    if not isinstance(backbone, ResNet):
        inner = (" (a detector's ResNet is its backbone's bottom_up)"
                 if isinstance(getattr(model, "bottom_up", None), ResNet) else "")
        raise ValueError(f"a ResNet or a Classifier of one is wanted, got "
                         f"{type(model).__name__}{inner}")
    why = _not_in_torchvision_layout(backbone)
    if why:
        raise ValueError(f"torchvision's and timm's ResNets compute no net of {why}: its "
                         f"weights have no counterpart there")
    converted = {}
    for key, value in model.state_dict().items():
        key = key.removeprefix("backbone.")
        if key.startswith("stem.conv."):
            key = "conv1." + key[len("stem.conv."):]
        elif key.startswith("stem.norm."):
            key = "bn1." + key[len("stem.norm."):]
        elif key.startswith("res"):
            stage, rest = key[len("res"):].split(".", 1)
            rest = _OUR_NORM.sub(r"\1bn\2.", rest).replace("shortcut.", "downsample.")
            key = f"layer{int(stage) - 1}.{rest}"
        converted[key] = value
    return converted


def _not_in_torchvision_layout(backbone: ResNet) -> str | None:
    """What of `backbone` no torchvision or timm ResNet has, else None."""
    if backbone.stem.stride != 4:
        return "a CIFAR stem (a 3x3 conv, no max pool)"
    if backbone.stages != ["res2", "res3", "res4", "res5"]:
        return (f"the stages {', '.join(backbone.stages)} alone (a C4 detector's res5 is its "
                f"box head's; a backbone's unused stages are dropped)")
    blocks = backbone.blocks()
    if any(not b.residual for b in blocks):
        return "no shortcuts (a plain net)"
    if any(b.skip_branch for b in blocks):
        return "a lesioned block (skip_branch)"
    if any(isinstance(b.shortcut, ZeroPadShortcut) for b in blocks):
        return "shortcut option A (zero padding)"
    if any(b.stride == 1 and b.in_channels == b.out_channels
           and not isinstance(b.shortcut, nn.Identity) for b in blocks):
        return "shortcut option C (projections everywhere)"
    if stride_in_1x1(backbone):
        return "strides in the bottlenecks' 1x1 convs (stride_in_1x1: detectron2's MSRA layout)"
    return _not_torchvisions_dilation(backbone)


def _not_torchvisions_dilation(backbone: ResNet) -> str | None:
    """torchvision's dilation (replace_stride_with_dilation; timm's output_stride alike): in a
    stage whose stride became dilation, the first block keeps the dilation before it and the
    others double it; only bottlenecks."""
    before = 1
    for index, name in enumerate(backbone.stages):
        stage = list(getattr(backbone, name))
        dilated = index > 0 and stage[0].stride == 1  # (its stride became dilation)
        if dilated and not isinstance(stage[0], Bottleneck):
            return "dilated basic blocks (torchvision has none; timm dilates them otherwise)"
        rates = [max(max(m.dilation) for m in b.modules() if isinstance(m, nn.Conv2d))
                 for b in stage]
        expected = [before] + [2 * before if dilated else before] * (len(stage) - 1)
        if rates != expected:
            return f"the dilations {rates} in {name} (multi_grid; torchvision's: {expected})"
        before *= 2 if dilated else 1
    return None


def is_torchvision_resnet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """torchvision's or timm's ResNet keys (timm's deep stem: conv1.0, conv1.3, conv1.6)."""
    return (("conv1.weight" in state_dict or "conv1.0.weight" in state_dict)
            and any(k.startswith("layer1.") for k in state_dict))


_DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
           ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101,
           ("bottleneck", (3, 8, 36, 3)): 152}


def torchvision_arch(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The torchvision / timm name of the ImageNet ResNet a torchvision / timm state dict
    holds ("resnet50", "resnext101_32x8d", "wide_resnet50_2"; with timm's "d" after the
    depth, "resnet50d", "resnext50d_32x4d", a deep stem and average-pooled shortcuts, or "c"
    a deep stem alone), from its stem, blocks and first 3x3 conv; None for another layout."""
    blocks = tuple(len({k.split(".")[1] for k in state_dict
                        if k.startswith(f"layer{i}.") and k.endswith(".conv1.weight")})
                   for i in range(1, 5))
    block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    depth, conv = _DEPTHS.get((block, blocks)), state_dict.get("layer1.0.conv2.weight")
    if depth is None or conv is None or conv.ndim != 4:
        return None
    width, groups = conv.shape[0], conv.shape[0] // max(conv.shape[1], 1)
    # (torchvision's shortcut is downsample.0 conv, .1 norm; timm's pooled one .1, .2)
    pooled = "layer2.0.downsample.2.weight" in state_dict
    if "conv1.0.weight" in state_dict:  # timm's deep stem: 32, 32, 64 channels (not its s, t)
        if [tuple(getattr(state_dict.get(f"conv1.{i}.weight"), "shape", ()))[:2]
                for i in (0, 3, 6)] != [(32, 3), (32, 32), (64, 32)]:
            return None
        depth = f"{depth}{'d' if pooled else 'c'}"
    elif pooled:  # (pooled shortcuts alone: no timm name)
        return None
    if block == "basic" or (width, groups) == (64, 1):
        return f"resnet{depth}" if width == 64 else None
    if groups == 1:
        return f"wide_resnet{depth}_{width // 64}" if width % 64 == 0 else None
    return f"resnext{depth}_{groups}x{width // groups}d"


def resnet_arch(state_dict: Mapping[str, Any], prefix: str = "") -> str | None:
    """`torchvision_arch` of the ResNet whose keys, in this project's layout, follow `prefix`
    in `state_dict` (what a network is, whatever name or options built it); "plain_" before
    it for a net without shortcuts."""
    keys = {}
    for key, value in state_dict.items():
        key = key[len(prefix):] if key.startswith(prefix) else ""
        if key.startswith("stem.conv."):
            keys["conv1." + key[len("stem.conv."):]] = value
        elif re.match(r"res\d+\.", key):
            stage, rest = key[len("res"):].split(".", 1)
            keys[f"layer{int(stage) - 1}.{rest.replace('shortcut.', 'downsample.')}"] = value
    name = torchvision_arch(keys)
    plain = not any(k.startswith("layer2.0.downsample.") for k in keys)
    return f"plain_{name}" if name and plain else name


def other_resnet_hint(source: str, theirs: str | None, ours: str | None,
                      whole: bool = False) -> str:
    """" (SOURCE holds a resnet50d, this model is a resnet50: ...)" where both are known and
    differ, else ""; `whole`: of a detector's or segmenter's backbone (model.backbone)."""
    if not theirs or not ours or theirs == ours:
        return ""
    registered = theirs in list_models()
    if whole:
        return (f" ({source} holds a {theirs} backbone, this model's is a {ours}"
                + (f": set model.backbone.name={theirs})" if registered else ")"))
    return (f" ({source} holds a {theirs}, this model is a {ours}"
            + (f": the backbone name {theirs} builds that net)" if registered else ")"))


def _is_bn_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


BN_STATISTICS = ("running_mean", "running_var")


def _norm_hint(missing: list[str], unexpected: list[str]) -> str:
    """What BatchNorm statistics present on one side only say: the weights were trained with
    another norm than the config's (GroupNorm has none)."""
    def statistics(keys: list[str]) -> bool:
        return bool(keys) and all(k.endswith(BN_STATISTICS) for k in keys)
    if statistics(missing) and not unexpected:
        return ("\n  (BatchNorm statistics are missing: the weights were trained with another "
                "norm, e.g. gn; set the model.*.norm keys they were trained with, which their "
                "run's config.yaml records)")
    if statistics(unexpected) and not missing:
        return ("\n  (the weights hold BatchNorm statistics this model has no place for: they "
                "were trained with bn or frozen_bn, as torchvision's and timm's ImageNet "
                "weights are; set model.*.norm to bn or frozen_bn, or start gn from random "
                "weights: weights=null)")
    return ""


# key parts only another project's detectors and segmenters have, with the project's name
FOREIGN_KEY_PARTS = (("proposal_generator.", "detectron2's"), ("fpn_lateral", "detectron2's"),
                     ("neck.lateral_convs.", "mmdetection's"),
                     ("rpn_head.rpn_conv.", "mmdetection's"),
                     ("roi_head.bbox_head.", "mmdetection's"),
                     ("decode_head.", "mmsegmentation's"))


# key parts of torchvision's models that are not built here
OTHER_TORCHVISION_MODELS = (("head.classification_head.", "RetinaNet"),
                            ("roi_heads.keypoint_", "Keypoint R-CNN"),
                            ("roi_heads.box_head.0.0.", "fasterrcnn_resnet50_fpn_v2 / "
                                                        "maskrcnn_resnet50_fpn_v2"),
                            ("backbone.body.features.", "MobileNet detectors"))


def foreign_checkpoint_hint(keys: Iterable[str], whole: Iterable[str] | None = None) -> str:
    """Where `keys` (a checkpoint's unexpected ones) are another project's model's, another
    torchvision model's or an ImageNet classifier's: a line saying so (a key listing alone
    reads as a broken file of ours); else "". `whole`: the keys a classifier's are looked
    for in (default `keys`; none where a backbone reads a classifier's file)."""
    keys = list(keys)
    whole = keys if whole is None else list(whole)
    for key in keys:
        for part, project in FOREIGN_KEY_PARTS:
            if part in key:
                return (f"\n  (keys such as {key} are {project}: its checkpoints are not read "
                        f"here; start from torchvision's or timm's ImageNet weights or a "
                        f"checkpoint written by this project)")
        for part, name in OTHER_TORCHVISION_MODELS:
            if key.startswith(part):
                return (f"\n  (keys such as {key} are of torchvision's {name}: that model is "
                        f"not built here; torchvision's fasterrcnn_resnet50_fpn, "
                        f"maskrcnn_resnet50_fpn and deeplabv3/fcn_resnet50/101 weights are read)")
    # (after a whole model's own parts, which name its project; RegNet and ConvNeXt have a
    # stem.0 too, but no stem.6 and no layer1)
    deep_stem = next((k for k in keys if "stem.0." in k), None)
    if deep_stem is not None and any("stem.6." in k for k in keys) and any(
            "layer1." in k for k in keys):
        return (f"\n  (keys such as {deep_stem} are the deep stem of mmdetection's or "
                f"mmsegmentation's ResNetV1c/V1d, in mmcv's layout: those checkpoints are not "
                f"read here; start from timm's resnetNNc / resnetNNd ImageNet weights or a "
                f"checkpoint written by this project)")
    if "fc.weight" in whole and any(k.startswith("layer1.") for k in whole):
        return ("\n  (these are an ImageNet classifier's weights, torchvision's or timm's "
                "ResNet: give them as model.backbone.weights=PATH, the backbone's start)")
    return ""


def check_and_load(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                   source: str, hint: str = "", class_layers: tuple[str, ...] = (),
                   file_keys: Iterable[str] = ()) -> None:
    """Load strictly; raise ValueError naming `source`, `hint` and every missing, unexpected
    or mis-shaped key. `file_keys`: the file's keys where `state_dict` is a part of them (a
    backbone's), for the hint that they are another project's.

    `class_layers`: prefixes of the class-dependent layers (a detector's or segmenter's
    predictors). Their mis-shaped tensors (weights trained on another class count) are left
    at the model's initialisation with a warning: fine-tuning to new classes, as detectron2's
    and mmdetection's weight loading do.
    """
    expected = model.state_dict()
    # another class count: another first dimension (a predictor of another width is refused
    # with the rest, not taken for new classes)
    renewed = [k for k, v in expected.items() if k.startswith(class_layers) and k in state_dict
               and state_dict[k].ndim == v.ndim and v.ndim > 0
               and state_dict[k].shape[0] != v.shape[0]
               and tuple(state_dict[k].shape[1:]) == tuple(v.shape[1:])]
    if renewed:
        logger.warning("%s: %s trained for another class count (%s): they start from scratch "
                       "for this model's classes", source, ", ".join(renewed),
                       ", ".join(f"{tuple(state_dict[k].shape)} -> {tuple(expected[k].shape)}"
                                 for k in renewed))
        state_dict = {k: v for k, v in state_dict.items() if k not in renewed}
        expected = {k: v for k, v in expected.items() if k not in renewed}
    missing, unexpected, mis_shaped = key_mismatches(expected, state_dict, _is_bn_counter)
    if missing or unexpected or mis_shaped:
        raise ConfigError(f"weights from {source} do not match {type(model).__name__}{hint}:"
                          + key_listing("missing", missing)
                          + key_listing("unexpected", unexpected)
                          + key_listing("mis-shaped", mis_shaped) + _norm_hint(missing, unexpected)
                          + foreign_checkpoint_hint([*unexpected, *file_keys],
                                                    whole=() if file_keys else unexpected))
    usable = {k: v for k, v in state_dict.items() if k in expected}
    model.load_state_dict(usable, strict=False)


def fit_optional_head(model: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str,
                      source: str, *, start_afresh: bool, unused: bool = False
                      ) -> dict[str, torch.Tensor]:
    """`state_dict` fitted to `model` where one of the two lacks the head under `prefix` (a
    Mask R-CNN's mask head, a segmenter's aux head): the weights' copy is left out when the
    model has none; with `start_afresh` (fine-tuning) the model's own head keeps its
    initialisation when the weights have none, as detectron2's and mmdetection's loading do.
    Either is logged, but for a model that leaves the head out on purpose (`unused`)."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    theirs = [k for k in state_dict if k.startswith(prefix)]
    head = prefix.rstrip(".")
    if theirs and not own:
        logger.log(logging.DEBUG if unused else logging.WARNING,
                   "%s: its %s (%d tensors) is left out: this model has none", source, head,
                   len(theirs))
        return {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    if own and not theirs and start_afresh:
        logger.warning("%s has no %s: this model's starts from scratch", source, head)
        return {**state_dict, **own}
    return dict(state_dict)


def _comparable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return round(value, 6) if isinstance(value, float) else value


def _show(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# key prefixes of one task's whole-model weights that no other task's have (this project's
# and torchvision's names)
TASK_KEYS = {"detection": ("rpn.", "roi_heads."), "sem_seg": ("head.predictor.", "classifier.4.")}


def refuse_other_task(source: str, provenance: Mapping[str, Any] | None, task: str,
                      state_dict: Mapping[str, Any] | None = None) -> None:
    """Refuse weights of another task than `task` ("detection", "sem_seg", "classification"):
    an own checkpoint by its recorded config, a bare state dict by its keys (TASK_KEYS). Their
    keys would not fit, with errors that say nothing of why."""
    config = (provenance or {}).get("config")
    recorded = config.get("task") if isinstance(config, Mapping) else None
    if recorded is not None and recorded != task:
        raise ConfigError(f"{source} holds a {recorded} model (its recorded config says task: "
                          f"{recorded}), not a {task} one")
    for other, prefixes in TASK_KEYS.items():
        found = [] if other == task else [k for k in state_dict or {} if k.startswith(prefixes)]
        if found:
            raise ConfigError(f"{source} holds a {other} model's weights (keys {found[:2]}...), "
                              f"not a {task} one")


def refuse_mismatched_settings(source: str, implied: Mapping[str, Any],
                               configured: Mapping[str, Any],
                               model: nn.Module | None = None) -> None:
    """Refuse weights whose network differs from the configured one in a way no tensor shape
    shows (strides, dilations, anchors, normalisation, ...).

    Args:
        source: the weights, for the message.
        implied: config key -> the value the weights were trained or converted with.
        configured: config key -> the value of this config (keys missing here are not checked).
        model: the model the weights go into; where it has no strided bottleneck (basic
            blocks) the `*stride_in_1x1` keys are not compared, as they change nothing there.

    Raises:
        ValueError: naming each differing key, both values, and the overrides to set.
    """
    basic_blocks = model is not None and stride_in_1x1(model) is None
    wrong = [k for k, v in implied.items()
             if k in configured and _comparable(configured[k]) != _comparable(v)
             and not (basic_blocks and k.endswith("stride_in_1x1"))]
    if not wrong:
        return
    details = "; ".join(f"{k} is {_show(configured[k])}, the weights need {_show(implied[k])}"
                        for k in wrong)
    fix = " ".join(f"{k}={_show(implied[k])}" for k in wrong)
    raise ConfigError(f"weights from {source} do not fit this config: {details}. Trained with "
                      f"other settings, they would compute something else, silently where every "
                      f"tensor has the right shape; set {fix}")


def refuse_other_normalisation(backbone: nn.Module, source: str, section: Mapping[str, Any],
                               prefix: str = "model.") -> None:
    """Backbone weights that record the pixel mean and std they were trained with (this
    project's) must be fed images normalised so: the config section whose keys are
    `prefix` + pixel_mean / pixel_std must say the same.

    Args:
        backbone: the backbone `load_weights` filled (its `provenance`).
        source: names the weights in messages.
        section: the config section holding pixel_mean and pixel_std.
        prefix: that section's place in the config, for messages.
    """
    provenance = getattr(backbone, "provenance", None) or {}
    keys = [k for k in ("pixel_mean", "pixel_std") if provenance.get(k) is not None]
    if keys:
        refuse_mismatched_settings(source, {prefix + k: list(provenance[k]) for k in keys},
                                   {prefix + k: list(section[k]) for k in keys})
    elif getattr(backbone, "imagenet_weights", False):
        imagenet = {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD}
        other = [k for k, v in imagenet.items() if _comparable(list(section[k]))
                 != _comparable(list(v))]
        if other:  # torchvision's and timm's ResNets: RGB, ImageNet's mean and std
            logger.warning("weights from %s are a torchvision or timm ResNet, trained on RGB "
                           "images normalised by ImageNet's mean and std; this config has %s: "
                           "unless these weights were trained so, set %s", source,
                           ", ".join(f"{prefix}{k}={_show(list(section[k]))}" for k in other),
                           " ".join(f"{prefix}{k}={_show(list(imagenet[k]))}" for k in other))


def stride_in_1x1(model: nn.Module) -> bool | None:
    """Whether the model's strided bottlenecks stride in their 1x1 conv (None: no bottleneck
    with a stride, e.g. a ResNet-18)."""
    for module in model.modules():
        convs = [getattr(module, f"conv{i}", None) for i in (1, 2, 3)]
        if all(isinstance(c, nn.Conv2d) for c in convs) and max(convs[0].stride
                                                                + convs[1].stride) > 1:
            return convs[0].stride != (1, 1)
    return None


def load_weights(model: nn.Module, weights: str | os.PathLike | Mapping[str, Any], *,
                 convert: Callable[[StateDict], StateDict] | None = None,
                 source: str | None = None, config_prefix: str = "") -> dict | None:
    """Load torchvision, timm or own weights into a ResNet or Classifier, strictly.

    The format is detected from the keys. Into a bare backbone, classifier keys are accepted
    (the `backbone.` prefix is stripped and `fc.*` dropped). Returns the checkpoint's
    provenance (None for foreign weights) and stores it as `model.provenance`.

    Args:
        model: the module to fill.
        weights: a file path or an already loaded checkpoint/state dict.
        convert: an extra key converter applied last (e.g. for detection models).
        source: names the weights in messages (default: the path).
        config_prefix: where the model's options sit in the caller's config (e.g.
            "model.backbone."), for the keys that messages name.

    Raises:
        ValueError: keys or shapes that do not match, or weights whose bottlenecks stride
            elsewhere than the model's (stride_in_1x1).
    """
    state_dict, provenance, source = open_weights(weights, source)
    file_keys = list(state_dict)
    foreign = is_torchvision_resnet(state_dict)  # torchvision and timm: stride on the 3x3
    arch = (provenance or {}).get("arch")
    if foreign:
        arch = arch or torchvision_arch(state_dict)
        state_dict = convert_torchvision_resnet(state_dict)
    configured = stride_in_1x1(model)
    implied = provenance.get("stride_in_1x1") if provenance else False if foreign else None
    if configured is not None and implied is not None:
        key = f"{config_prefix}stride_in_1x1"
        refuse_mismatched_settings(source, {key: bool(implied)}, {key: configured})
    expected = model.state_dict()
    if any(k.startswith("backbone.") for k in expected):
        if not any(k.startswith("backbone.") for k in state_dict):
            state_dict = {k if k.startswith("fc.") else f"backbone.{k}": v
                          for k, v in state_dict.items()}
    elif any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items()
                      if k.startswith("backbone.")}
    if not any(k.startswith("fc.") for k in expected):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    if convert is not None:
        state_dict = convert(state_dict)
    # what each network is, by its keys (a name's options may have changed it), else its name
    prefix = "backbone." if any(k.startswith("backbone.") for k in expected) else ""
    hint = other_resnet_hint(source, resnet_arch(state_dict, prefix) or arch,
                             resnet_arch(expected, prefix) or getattr(model, "arch", None))
    check_and_load(model, state_dict, source, hint, file_keys=file_keys)
    model.provenance = provenance
    model.imagenet_weights = foreign and provenance is None
    return provenance
