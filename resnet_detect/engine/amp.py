"""Mixed precision: the `train.amp` setting, and what a device can run of it.

bf16 autocast runs on a GPU and on CPUs whose oneDNN has bf16 kernels. It pays on AVX512-BF16
or AMX parts (AMD Zen 4, Intel Sapphire Rapids); BENCHMARKS.md has the measured speed-up.
fp16 is for GPUs only.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from .config import ConfigError

logger = logging.getLogger(__name__)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def float32_default() -> Iterator[None]:
    """torch's default dtype float32 inside (a caller's torch.set_default_dtype(float64)
    built float64 weights that float32 images then failed against), the caller's after."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def parse_amp(value: Any, key: str = "train.amp") -> str | None:
    """false/off/none -> None (float32), true -> "bf16", "bf16", "fp16".

    Raises:
        ValueError: any other value, naming `key`.
    """
    if value in (None, False, "off", "none", "false"):
        return None
    if value is True or value == "true":
        return "bf16"
    if value not in AMP_DTYPES:
        raise ConfigError(f"{key} must be false, true, bf16 or fp16, got {value!r}")
    return value


def cpu_supports_bf16() -> bool:
    """oneDNN can run bf16 convolutions and matmuls on this CPU."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amp_for_device(amp: str | None, device_type: str, warn: bool = True,
                   doing: str = "training") -> str | None:
    """`amp` where `device_type` runs it; bf16 on a CPU without bf16 kernels: None with a
    warning unless not `warn` (`doing` goes on in float32, as the CPU quickstarts expect).

    Raises:
        ValueError: fp16 off a GPU (no CPU kernels to speak of, and its GradScaler is for GPUs).
    """
    if amp is None or device_type == "cuda":
        return amp
    if amp == "fp16":
        raise ConfigError(f"train.amp=fp16 runs on a GPU only; this run is on the {device_type}: "
                          f"set train.amp=bf16 (used where the CPU has bf16 kernels, "
                          f"{'as this one has' if cpu_supports_bf16() else 'this one has none'})"
                          f" or train.amp=false")
    if device_type == "cpu" and amp == "bf16" and cpu_supports_bf16():
        return amp
    if warn:
        logger.warning("AMP %s is not supported on this %s: %s in float32", amp,
                       device_type, doing)
    return None
