"""`train.cache_host_memory`: keep freed host memory for reuse (glibc), for CPU training;
and `release_free_memory`, the opposite, for a long-running process that predicts.

glibc's malloc serves every large request (above 128 KiB to 32 MiB) with fresh pages from
mmap, returns them to the kernel when they are freed, and trims the top of its heap as soon
as 128 KiB are free there. A training step allocates and frees the same large activations and
gradients at every step, so on a CPU each step page-faults them all in again and the kernel
zeroes every page: about a million page faults per step for R50-FPN at 800x1067
(BENCHMARKS.md, "Host memory allocator"). With mmap off, no trimming and a large top pad,
freed memory stays in the heap, no page is faulted in twice, and later steps reuse it where
glibc places their blocks on freed ones (not always: an aligned request slightly larger than
the block freed before it goes elsewhere, so the heap may grow for a few steps). In exchange
the process keeps its high-water mark (and a loader worker forked later maps that heap too, so
pages the parent rewrites afterwards are copied), hence off by default. Set by the training tools
(cli.py) for CPU runs; process-wide, so a library call such as engine.run_training
does not change it behind its caller's back.
"""
from __future__ import annotations

import ctypes
import functools
import platform
from collections.abc import Callable

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's malloc.h
_TOP_PAD = 256 << 20  # grow the heap in large steps: fewer brk calls and new pages
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def _on_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not _on_glibc():
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # a libc that says glibc but lacks it
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


def release_free_memory() -> bool:
    """Hand the freed parts of the heap back to the kernel (glibc's malloc_trim; a no-op
    elsewhere); returns whether it ran.

    Why the Predictors call it after each CPU prediction: an image's transient tensors, of
    other sizes for every image size, come from the heap once glibc has raised its mmap
    threshold, and the gaps they leave stay in the process: a service predicting images of
    varying sizes kept growing (BENCHMARKS.md, "A Predictor in a long-running process")."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def cache_host_memory() -> bool:
    """Keep freed memory of this process (and of the processes it forks later, such as loader
    workers) in its heap for reuse. Returns whether it was applied: False off glibc."""
    if not _on_glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_TOP_PAD, _TOP_PAD)))
