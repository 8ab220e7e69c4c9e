"""`train.compile`: torch.compile the part of the model that dominates the step.

What is compiled: the model's `backbone` (ResNet + FPN for the detectors, the ResNet for the
segmentation heads), or the whole model when it has none (the classifiers of pretraining).
Compiling in place (`nn.Module.compile`) keeps the state_dict keys, so checkpoints are the same
files with or without it. The first steps are slower (compilation); a detector trained with
several image sizes compiles a few shape-generic graphs, not one per size.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from typing import Any

import torch
from torch import nn

from .config import ConfigError

logger = logging.getLogger(__name__)


def parse_compile(value: Any, key: str = "train.compile") -> str | None:
    """false -> None (eager), true -> "inductor", or a torch.compile backend name.

    Raises:
        ValueError: any other value, naming `key` and the backends available.
    """
    if value in (None, False, "false", "off", "none"):
        return None
    if value is True or value == "true":
        return "inductor"
    backends = _backends()
    if not isinstance(value, str) or value not in backends:
        raise ConfigError(f"{key} must be false, true or a torch.compile backend "
                          f"({', '.join(backends)}), got {value!r}")
    return value


def _backends() -> list[str]:
    import torch._dynamo
    return sorted(torch._dynamo.list_backends(exclude_tags=()))


def compiler_missing(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot compile for `device` here, or None when it can."""
    if backend != "inductor":
        return None
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "inductor needs triton on a GPU and it is not installed"
    if device.type == "cpu" and not any(shutil.which(c) for c in (
            os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        return "inductor needs a C++ compiler on a CPU (g++ or clang++; or set CXX)"
    return None


def compile_model(model: nn.Module, backend: str | None, device: torch.device,
                  key: str = "train.compile") -> nn.Module:
    """Compile `model`'s backbone (or the whole model) in place with `backend`; eager, with a
    warning naming `key`, where the compiler is unavailable. Returns `model`."""
    if backend is None:
        return model
    missing = compiler_missing(backend, device)
    if missing:
        logger.warning("%s=%s: %s; training eager", key, backend, missing)
        return model
    target = model.backbone if isinstance(getattr(model, "backbone", None), nn.Module) else model
    target.compile(backend=backend)
    logger.info("%s: %s compiled with torch.compile(backend=%r)", key,
                "the backbone" if target is not model else "the model", backend)
    return model
