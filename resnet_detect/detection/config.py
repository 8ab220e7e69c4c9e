"""Detection configs: every valid key with its default lives in
``configs/detection/base_faster_rcnn.yaml`` (with the shared ``configs/base_train.yaml``);
a config may only change those keys.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from resnet_detect import CONFIGS
from resnet_detect.engine.config import config_from_mapping as engine_config_from_mapping
from resnet_detect.engine.config import load_config as engine_load_config
from resnet_detect.engine.config import ConfigError, check_sizes, is_positive_int, load_defaults
from resnet_detect.engine.tasks import refuse_other_task_config

BASE_CONFIG = CONFIGS / "detection" / "base_faster_rcnn.yaml"


def defaults() -> DictConfig:
    """The defaults file as a config (every valid key)."""
    return load_defaults(BASE_CONFIG)


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """A detection config: `path` with its `_base_` files and `key=value` overrides.

    Raises:
        ConfigError: unknown keys (named with the file or override), bad overrides.
    """
    refuse_other_task_config(path, overrides, "detection")
    return engine_load_config(path, overrides, defaults=defaults())


def config_from_mapping(config: Mapping[str, Any] | DictConfig, overrides: Sequence[str] = (),
                        source: str = "the checkpoint's config") -> DictConfig:
    """A detection config from a loaded mapping (e.g. the one a checkpoint records)."""
    return engine_config_from_mapping(config, overrides, defaults=defaults(), source=source)


def test_resize(cfg: Mapping[str, Any] | DictConfig) -> tuple[int, int | None]:
    """(short edge, max size) of test-time resizing, from `data.val`."""
    min_size = cfg["data"]["val"]["min_size"]
    check_sizes(min_size, "data.val.min_size")  # (0: an export that resized to 1 pixel)
    if not isinstance(min_size, int):  # a list: test at its largest value
        min_size = max(int(v) for v in min_size)
    return int(min_size), check_max_size(cfg["data"]["val"]["max_size"], "data.val.max_size")


def check_max_size(value: Any, key: str) -> int | None:
    """A cap on the longer side: a positive integer, or 0 / null for none (-1, "no cap"
    elsewhere, resized every image to 1 pixel)."""
    if value is None or value == 0:
        return None
    if not is_positive_int(value):
        raise ConfigError(f"{key} must be a positive integer (pixels), or 0 or null for no cap, "
                          f"got {value!r}")
    return int(value)
