"""A model config's mistakes found before the training data is read (minutes at COCO scale)
rather than after: the model built on the meta device (no memory) with a stand-in class count,
every weights file the config names looked for and read (a damaged file is told before
minutes of reading the data, not after), and the backbone's weights loaded into that model as
the real build loads them (weights of another architecture or normalisation; a classifier's
model.weights, which fill its backbone)."""
from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from torch import nn

from .config import ConfigError
from .distributed import is_main_process
from .files import check_weights_file
from .optim import refuse_unknown_modules

logger = logging.getLogger(__name__)


def weights_keys(node: Any, prefix: str = "model.") -> dict[str, Any]:
    """Every `weights` key under a config node (model.weights, model.backbone.weights) with
    its value, by dotted name."""
    if not isinstance(node, DictConfig):
        return {}
    found = {f"{prefix}{k}": v for k, v in node.items() if k == "weights"}
    for key, value in node.items():
        found.update(weights_keys(value, f"{prefix}{key}."))
    return found


def warn_of_random_backbone(cfg: DictConfig) -> None:
    """A backbone that starts from random weights (no weights key set) is said, and where it
    keeps stages frozen or frozen BatchNorm (those layers would stay as initialised), how to
    train from scratch."""
    weights = weights_keys(cfg.get("model"))
    backbone = (cfg.get("model") or {}).get("backbone")
    if not isinstance(backbone, DictConfig) or any(weights.values()) or not is_main_process():
        return
    at = backbone.get("freeze_at") or 0
    if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= 5:
        at = 0  # the build check names a bad value
    stages = ["the stem", "the stem", "the stem and res2", "the stem, res2 and res3",
              "the stem and res2..res4", "the stem and res2..res5"][at]
    kept = [f"model.backbone.freeze_at={at} never trains {stages}"] if at else []
    if backbone.get("norm") == "frozen_bn":
        kept.append("model.backbone.norm=frozen_bn normalises with the initial statistics")
    if kept:
        logger.warning("no weights are given (%s null): the backbone starts from random "
                       "weights, and %s; from scratch, set model.backbone.freeze_at=0 "
                       "model.backbone.norm=gn (detectron2's scratch recipes: GN, nothing "
                       "frozen)", ", ".join(weights), "; ".join(kept))
    else:
        logger.warning("no weights are given (%s null): the backbone starts from random "
                       "weights (ImageNet weights: model.backbone.weights=PATH)",
                       ", ".join(weights))


def check_model_config(build: Callable[[DictConfig], nn.Module], cfg: DictConfig, *,
                       num_classes: int = 2,
                       read_weights: Callable[[str], Any] | None = None,
                       loaded_early: str = "model.backbone.weights") -> None:
    """Raise what `build(cfg)` would raise for the config's `model` section (ConfigError),
    and a FileNotFoundError naming a `weights` key whose file is not there.

    Args:
        build: the task's model builder.
        cfg: the config; `model.num_classes` may still be null (read from the data later).
        num_classes: the stand-in class count while it is.
        read_weights: reads a weights file, raising what makes it unreadable (a damaged or
            cut file, another format); each is read so, before the data, when given.
        loaded_early: the weights key whose file is also loaded into the probe, as `build`
            loads it: one whose fit does not depend on the data's classes.
    """
    weights = weights_keys(cfg.get("model"))
    whole = weights.get("model.weights")
    for key, value in weights.items():
        if key == "model.backbone.weights" and whole and value and not os.path.isfile(value):
            logger.info("model.backbone.weights (%s) is not there and not needed: "
                        "model.weights (%s) gives the whole model's, the backbone's included",
                        value, whole)
            continue
        if isinstance(value, str) and value:
            try:
                check_weights_file(value)
            except FileNotFoundError as e:
                made_by = (" (tools/pretrain.py trains one: `make demo` writes the quickstarts'"
                           ")" if key == "model.backbone.weights" else "")
                raise FileNotFoundError(f"{key}: {e}{made_by}; {key}=null starts from random "
                                        f"weights") from None
            if read_weights is not None:
                read_weights(value)
    probe = copy.deepcopy(cfg)
    with open_dict(probe):
        for key in weights:
            OmegaConf.update(probe, key, None)
        if "num_classes" in probe.model and probe.model.num_classes is None:
            # (model.class_weight gives one weight per class of the data: as many)
            weights_of_classes = probe.model.get("class_weight")
            probe.model.num_classes = (len(weights_of_classes) if isinstance(
                weights_of_classes, ListConfig) and len(weights_of_classes) >= 2
                else num_classes)
    try:
        model = _build_on_meta(build, probe)
    except ConfigError:
        raise
    except Exception:  # a part the meta device cannot build: the real build says what is wrong
        return
    multipliers = (cfg.get("train") or {}).get("lr_multipliers")
    if isinstance(multipliers, (DictConfig, dict)) and multipliers:
        # a module name mistyped: said before the data is read (minutes at COCO's size)
        refuse_unknown_modules(model, list(multipliers))
    # the backbone's weights loaded as the real build loads them (their checks: architecture,
    # normalisation, keys and shapes), into the meta model: nothing is copied. (A detector's
    # or segmenter's whole-model weights are left to the real build: what they must match
    # depends on the data's classes.)
    early = weights.get(loaded_early)
    if isinstance(early, str) and early and os.path.isfile(early):
        OmegaConf.update(probe, loaded_early, early)
        quiet = logging.root.manager.disable
        logging.disable(logging.WARNING)  # what loading them warns of, the real build says
        try:
            _build_on_meta(build, probe)
        except (ConfigError, ValueError):
            raise
        except Exception:
            pass
        finally:
            logging.disable(quiet)


def _build_on_meta(build: Callable[[DictConfig], nn.Module], cfg: DictConfig) -> nn.Module:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return build(cfg)
