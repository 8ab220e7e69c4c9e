"""Detection configs: every valid key with its default lives in
``configs/detection/base_faster_rcnn.yaml``; a config may only change those keys.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engine.config import ConfigError, load_config as engine_load_config, make_schema

BASE_CONFIG = (Path(__file__).resolve().parents[1] / "configs" / "detection"
               / "base_faster_rcnn.yaml")


def defaults() -> DictConfig:
    """The defaults file as a config (every valid key)."""
    return OmegaConf.load(BASE_CONFIG)  # type: ignore[return-value]


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """A detection config: `path` with its `_base_` files and `key=value` overrides.

    Raises:
        ConfigError: unknown keys (named with the file or override), bad overrides.
    """
    return engine_load_config(path, overrides, defaults=defaults())


def config_from_mapping(config: Mapping[str, Any] | DictConfig,
                        overrides: Sequence[str] = ()) -> DictConfig:
    """A detection config from a loaded mapping (e.g. the one a checkpoint records)."""
    cfg = make_schema(defaults())
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(config))
    except Exception as err:  # unknown key in struct mode
        raise ConfigError(f"invalid detection config: {err}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except Exception as err:
            raise ConfigError(f"override '{item}': {err}") from None
    return cfg  # type: ignore[return-value]


def test_resize(cfg: Mapping[str, Any] | DictConfig) -> tuple[int, int | None]:
    """(short edge, max size) of test-time resizing, from `data.val`."""
    min_size = cfg["data"]["val"]["min_size"]
    if not isinstance(min_size, int):  # a list: test at its largest value
        min_size = max(int(v) for v in min_size)
    return int(min_size), cfg["data"]["val"]["max_size"] or None
