"""`train.compile` and `test.compile`: torch.compile the part of the model that dominates the
step (training) or the forward pass (tools/eval.py, Predictor, tools/demo.py).

What is compiled: the parts a model names in `compiled_parts` (default: its `backbone`, the
ResNet + FPN of the detectors, whose heads see a new box count at every step and ran slower
compiled; the segmentors name their heads too; a pretraining classifier's fc layer is left
out), or the whole model when it has none of them.
Compiling in place (`nn.Module.compile`) keeps the state_dict keys, so checkpoints are the same
files with or without it. The first steps are slower (compilation). Inference at new image
sizes reuses a few shape-generic graphs; training may not: on a CPU inductor fixes the sizes
of each convolution's backward, so a detector trained at many sizes compiles again at each new
one, up to dynamo's recompile limit (8), and runs eager at sizes met after it (warned by
torch). Training compiles pay at fixed sizes (crops; the GPU suite's batches).

`test.compile_mode: reduce-overhead` (inductor only) also replays the compiled part as CUDA
graphs on a GPU: one launch instead of hundreds of kernels per image, the lever where the
host's launches bound inference at batch 1. A graph is recorded for each new input size, so
it pays on a stream of one size (a camera, a video, images resized to one shape), and less on
COCO's many sizes.
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
from .export import is_onnx

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
    """torch.compile's backends for users, and its two debugging ones (eager, aot_eager:
    tracing without code generation)."""
    import torch._dynamo
    return sorted({*torch._dynamo.list_backends(), "eager", "aot_eager"})


# backends whose compiler is a package of its own, imported at the first call
_PACKAGES = {"tvm": "tvm", "openxla": "torch_xla"}


MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def parse_compile_mode(value: Any, backend: str | None) -> str | None:
    """`test.compile_mode` as torch.compile's `mode` for the `test.compile` backend `backend`:
    None for "default".

    Raises:
        ConfigError: a mode not in MODES, or one given without the inductor backend (the
            other backends take none, and without compilation it would be ignored).
    """
    if value in (None, "default"):
        return None
    if value not in MODES:
        raise ConfigError(f"test.compile_mode must be one of {', '.join(MODES)}, got {value!r}")
    if backend != "inductor":
        raise ConfigError(f"test.compile_mode={value} needs test.compile: true (inductor), got "
                          f"test.compile: {'false' if backend is None else backend}")
    return str(value)


def inference_compile_settings(cfg: Any) -> tuple[str | None, str | None]:
    """(backend, mode) from the config's `test.compile` and `test.compile_mode`; training
    checks them before its first step (its evaluations do not use them, tools/eval.py does).

    Raises:
        ConfigError: a bad value, naming its key.
    """
    backend = parse_compile(cfg.test.compile, "test.compile")
    return backend, parse_compile_mode(cfg.test.compile_mode, backend)


def compile_for_inference(model: Any, cfg: Any, device: torch.device,
                          weights: Any = None) -> Any:
    """`model` compiled as the config's `test.compile` and `test.compile_mode` say (in place;
    eager with a warning where the compiler is missing). An exported ONNX graph as `weights`
    is run by ONNX Runtime: a compilation asked for is named as not applied. Returns `model`.

    Raises:
        ConfigError: a bad `test.compile` or `test.compile_mode`, named.
    """
    backend, mode = inference_compile_settings(cfg)
    if is_onnx(weights):
        if backend is not None:
            logger.warning("test.compile=%s is not applied: %s is run by ONNX Runtime",
                           backend, weights)
        return model
    return compile_model(model, backend, device, key="test.compile", mode=mode)


def _listed(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 2 else items)


def compiler_missing(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot compile for `device` here, or None when it can."""
    package = _PACKAGES.get(backend)
    if package is not None and importlib.util.find_spec(package) is None:
        return f"{backend} needs the {package} package and it is not installed"
    if backend == "cudagraphs" and device.type != "cuda":
        return "cudagraphs needs a GPU"
    if backend != "inductor":
        return None
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "inductor needs triton on a GPU and it is not installed"
    if device.type == "cpu" and not any(shutil.which(c) for c in (
            os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        return "inductor needs a C++ compiler on a CPU (g++ or clang++; or set CXX)"
    return None


def compile_model(model: nn.Module, backend: str | None, device: torch.device,
                  key: str = "train.compile", mode: str | None = None) -> nn.Module:
    """Compile `model`'s `compiled_parts` (or the whole model) in place with `backend` (and
    torch.compile's `mode`); eager, with a warning naming `key`, where the compiler is
    unavailable. Returns `model`."""
    if backend is None:
        return model
    missing = compiler_missing(backend, device)
    if missing:
        logger.warning("%s=%s: %s; running eager", key, backend, missing)
        return model
    if mode in ("reduce-overhead", "max-autotune") and device.type != "cuda":
        logger.warning("%s_mode=%s: its CUDA graphs need a GPU; compiled without them", key,
                       mode)
    names = [name for name in getattr(model, "compiled_parts", ("backbone",))
             if isinstance(getattr(model, name, None), nn.Module)]
    for target in [getattr(model, name) for name in names] or [model]:
        target.compile(backend=backend, mode=mode)
    logger.info("%s: %s compiled with torch.compile(backend=%r%s)", key,
                _listed([f"the {name}" for name in names]) or "the model", backend,
                f", mode={mode!r}" if mode else "")
    return model
