"""The one registry of backbone names: `build("resnet50", **options)`."""
from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

from resnet_detect.engine.config import ArgumentError, ConfigError
from resnet_detect.engine.custom_imports import REGISTERED_BY, module_file
from .resnet import IMAGENET_DEPTHS, ResNet

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)


def imagenet_resnet(*, depth: int = 50, block: str | None = None, **options: Any) -> ResNet:
    """ResNet-18/34/50/101/152 of He et al. (v1.5 unless stride_in_1x1)."""
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"depth {depth} is not an ImageNet ResNet's; "
                         f"valid: {', '.join(map(str, IMAGENET_DEPTHS))}")
    block = block or ("basic" if depth < 50 else "bottleneck")
    return ResNet(stage_blocks=IMAGENET_DEPTHS[depth], stage_planes=(64, 128, 256, 512),
                  block=block, stem="imagenet", **options)


def cifar_resnet(*, depth: int = 20, shortcut: str = "A", **options: Any) -> ResNet:
    """The 6n+2-layer CIFAR nets of He et al. section 4.2: widths 16-32-64, option A."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth {depth} is not a CIFAR ResNet's: 6n+2 (20, 32, 44, 56, 110, "
                         f"1202)")
    n = (depth - 2) // 6
    return ResNet(stage_blocks=(n, n, n), stage_planes=(16, 32, 64), block="basic",
                  stem="cifar", stem_channels=16, shortcut=shortcut, **options)


def _preset(builder: Callable[..., ResNet], **preset: Any) -> Callable[..., ResNet]:
    def build_preset(**options: Any) -> ResNet:
        return builder(**{**preset, **options})
    return build_preset


_REGISTRY: dict[str, Callable[..., ResNet]] = {}
for _depth in IMAGENET_DEPTHS:
    _REGISTRY[f"resnet{_depth}"] = _preset(imagenet_resnet, depth=_depth)
    # ResNet-C and -D (timm's resnet50c and resnet50d, mmdetection's ResNetV1c and ResNetV1d)
    _REGISTRY[f"resnet{_depth}c"] = _preset(imagenet_resnet, depth=_depth, deep_stem=True)
    _REGISTRY[f"resnet{_depth}d"] = _preset(imagenet_resnet, depth=_depth, deep_stem=True,
                                            avg_down=True)
for _depth in CIFAR_DEPTHS:
    _REGISTRY[f"cifar_resnet{_depth}"] = _preset(cifar_resnet, depth=_depth)
_REGISTRY.update({
    "resnext50_32x4d": _preset(imagenet_resnet, depth=50, groups=32, width_per_group=4),
    "resnext101_32x8d": _preset(imagenet_resnet, depth=101, groups=32, width_per_group=8),
    "resnext101_64x4d": _preset(imagenet_resnet, depth=101, groups=64, width_per_group=4),
    "wide_resnet50_2": _preset(imagenet_resnet, depth=50, width=2),
    "wide_resnet101_2": _preset(imagenet_resnet, depth=101, width=2),
})
for _name in list(_REGISTRY):
    _REGISTRY[f"plain_{_name}"] = _preset(_REGISTRY[_name], residual=False)
_BUILT_IN = frozenset(_REGISTRY)


# what `build` takes: the builders' own arguments and ResNet's that neither builder fixes
_OPTIONS = {"depth", "block", "shortcut"} | set(inspect.signature(ResNet).parameters) - {
    "stage_blocks", "stage_planes", "stem"}

_TRUE_OR_FALSE = {n for n, p in inspect.signature(ResNet).parameters.items()
                  if p.annotation in (bool, "bool")}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def register_backbone(name: str) -> Callable[[Callable[..., ResNet]], Callable[..., ResNet]]:
    """`@register_backbone("resnet26")` on a function taking ResNet's options (`**options`:
    norm, freeze_at, out_features, output_stride, ...) and returning a `ResNet` (or a
    subclass): `name` is then a `model.backbone.name` of every task and tool, once the
    module is imported (a config's `custom_imports` names it; docs/extending.md). What
    registers is the module whose body runs the registration (a factory's caller; a
    function called by a script: the script). It may register the name again (run again:
    importlib.reload, a notebook cell), as may its file imported under another module name;
    another module may not."""
    if not isinstance(name, str) or not name:
        raise ArgumentError(f"a backbone's name is a non-empty string, got {name!r}")

    def register(builder: Callable[..., ResNet]) -> Callable[..., ResNet]:
        caller = _registering_module()
        known, earlier = _REGISTRY.get(name), REGISTERED_BY.get(("backbone", name))
        again = (caller.get("__name__") == earlier
                 or (caller.get("__file__") or 0) == module_file(earlier))
        if known is not None and known is not builder and (name in _BUILT_IN or not again):
            raise ArgumentError(f"backbone {name!r} is registered already"
                                + (" (one of this project's)" if name in _BUILT_IN else
                                   f" (by {earlier})") + ": give yours another name")
        _REGISTRY[name] = builder
        if earlier in (None, "__main__"):  # (kept where its file is imported again as another)
            REGISTERED_BY["backbone", name] = caller.get("__name__", "")
        return builder
    return register


def _registering_module() -> dict[str, Any]:
    """The globals of the module whose body, run, registers (its caller's frames up to the
    nearest module body: a decorator's, or a factory's that registers for its caller)."""
    frame = sys._getframe(2)
    while frame.f_code.co_name != "<module>" and frame.f_back is not None:
        frame = frame.f_back
    return frame.f_globals


def build_resnet(name: str, config_prefix: str = "", **options: Any) -> ResNet:
    """Build a registered backbone by name; options override the preset. `config_prefix`:
    where the options sit in the caller's config, for messages."""
    if name not in _REGISTRY:
        lower = str(name).lower().replace("-", "").replace("_", "")
        spelt = [m for m in list_models() if m.replace("_", "") == lower]
        raise ArgumentError(f"unknown backbone {name!r}" + (
            f" (did you mean {spelt[0]!r}?)" if spelt else "") + f"; valid: "
            f"{', '.join(list_models())} (one of your own: its module, which calls "
            f"register_backbone, in the config's custom_imports)")
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:  # a ConfigError when the keys are the config's
        raise (ConfigError if config_prefix else ArgumentError)(
            f"unknown backbone option {', '.join(config_prefix + k for k in unknown)}; valid: "
            f"{', '.join(sorted(_OPTIONS))}" + next((
                # {drop_path_rate:0.1}: YAML reads one key, "drop_path_rate:0.1", of no value
                f" (YAML needs a space after a colon: {{{k.split(':', 1)[0]}: "
                f"{k.split(':', 1)[1]}}})" for k in unknown if ":" in k), ""))
    not_bool = [k for k in sorted(set(options) & _TRUE_OR_FALSE)
                if options[k] is not None and not isinstance(options[k], bool)]
    if not_bool:  # a string "flase" (model_info's key=value) would be true
        raise (ConfigError if config_prefix else ArgumentError)(", ".join(
            f"{config_prefix}{k} must be true or false, got {options[k]!r}" for k in not_bool))
    try:
        model = _REGISTRY[name](**options)
    except ValueError as e:  # "multi_grid [1, 1, 1] must ...": named as the config's key
        if config_prefix and str(e).split(" ", 1)[0] in _OPTIONS:
            raise ConfigError(f"{config_prefix}{e} (backbone {name})") from None
        raise
    if not isinstance(model, ResNet):  # (its stages, freezing and weight loading are ResNet's)
        raise ArgumentError(f"backbone {name!r}: {getattr(_REGISTRY[name], '__qualname__', '')} "
                            f"returned a {type(model).__name__}, not a backbones.ResNet (or a "
                            f"subclass of it)")
    return model
