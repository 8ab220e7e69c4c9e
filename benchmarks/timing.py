"""Interleaved wall-clock timing shared by the benchmark scripts.

Every run is timed once per round, the runs taking turns round after round, so that load
from other processes on a shared machine falls on all of them alike. The first round
warms up (allocator, kernels, caches) and is dropped.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping

import torch


def time_interleaved(runs: Mapping[str, Callable[[], object]], repeats: int, *,
                     inference: bool = True) -> dict[str, list[float]]:
    """Seconds taken by each run in each of `repeats` timed rounds.

    Args:
        runs: name -> a call doing the work once.
        repeats: timed rounds (one more, the warm-up, is run and dropped).
        inference: run the calls under `torch.inference_mode`.

    Returns:
        name -> `repeats` durations in seconds, in round order.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats + 1):
        for name, run in runs.items():
            with torch.inference_mode() if inference else contextlib.nullcontext():
                start = time.perf_counter()
                run()
                seconds = time.perf_counter() - start
            if repeat:
                times[name].append(seconds)
    return times
