"""Loaders for every task: batches are lists of samples (the model pads and stacks), with the
samples of unreadable images (None) dropped, so the training loop can count them. A task whose
samples all have one size may collate them in the workers instead (one tensor per batch crosses
the process boundary, not one per image); its batch still has `len` = the images it holds.
"""
from __future__ import annotations

import functools
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from ..distributed import all_reduce_sum, any_process, get_world_size, is_main_process
from ..logging import format_eta, handler_settings, set_up_handlers
from .. import preemption
from ..preemption import EvaluationInterrupted, StopRequest
from .coco import DatasetError
from .images import silence_opencv_log
from .samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler

logger = logging.getLogger(__name__)
# seconds between an evaluation's progress lines (a COCO val split takes hours on a CPU)
PROGRESS_SECONDS = 60.0


def collate(batch: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Keep samples as a list (images may differ in size), dropping skipped (None) ones.

    A batch can come out shorter than asked (or empty) when images were unreadable; the
    difference is the number skipped.
    """
    return [sample for sample in batch if sample is not None]


# Workers forked where the platform allows it safely (Linux), whatever Python's default:
# Python 3.14 makes it forkserver on Linux, whose workers import torch anew (seconds each,
# again at every evaluation) before they can leave a Ctrl-C to the main process. macOS keeps
# its spawn (its system libraries are not fork-safe).
WORKER_START_METHOD = "fork" if sys.platform == "linux" else None


def _init_worker(catching: Any, spawned_logging: Any, worker_id: int) -> None:
    # Each loader worker is one process: one torch thread, so the workers do not compete with
    # the training threads. (A forked worker has OpenCV's one thread and the log handlers
    # from the parent: _worker_options; setting OpenCV's after the fork deadlocks. A spawned
    # one starts afresh: its warnings of unreadable images went to no log.txt.)
    # a worker that died of a signal sent to the whole job would fail the step in flight;
    # first: a spawned worker runs with them blocked until then
    preemption.leave_stop_signals_to_the_parent(catching)
    torch.set_num_threads(1)
    silence_opencv_log()
    if spawned_logging is not None:
        cv2.setNumThreads(1)
        set_up_handlers(spawned_logging)


def _worker_options(num_workers: int) -> dict[str, Any]:
    """How every loader starts its `num_workers` workers.

    One OpenCV thread in this process from the first loader on (not at import: a library
    user's own OpenCV work kept its threads): the workers, or the training threads, are the
    parallelism, and OpenCV's pool does not survive the fork of a worker (reconfiguring it
    in the worker, after the fork, deadlocks)."""
    cv2.setNumThreads(1)
    context = preemption.worker_context(WORKER_START_METHOD) if num_workers > 0 else None
    spawned = context is not None and context.get_start_method() != "fork"
    spawned_logging = handler_settings() if spawned else None
    return {"num_workers": num_workers,
            "worker_init_fn": functools.partial(_init_worker, preemption.CATCHING,
                                                spawned_logging),
            "multiprocessing_context": context}


def build_train_loader(dataset: Dataset, *, batch_size: int, seed: int = 0,
                       num_workers: int = 0, start_iter: int = 0,
                       group_ids: Sequence[int] | np.ndarray | None = None,
                       pin_memory: bool = False, rank: int | None = None,
                       world_size: int | None = None,
                       collate_fn: Callable[[list[Any]], Any] = collate,
                       batch_keys: Callable[[list[Any]], list[Any]] | None = None,
                       repeat_factors: Sequence[float] | np.ndarray | None = None
                       ) -> DataLoader:
    """Endless training loader of lists of samples, resumable at a step.

    Args:
        dataset: indexed by `(index, augmentation seed)` keys.
        batch_size: images per step on this process (the global batch / world size).
        seed: sampling and augmentation seed, the same on every rank.
        num_workers: DataLoader worker processes.
        start_iter: steps already done (resume): that many batches are skipped.
        group_ids: group of every index (aspect-ratio grouping); None batches consecutive keys.
        pin_memory: page-locked batches for asynchronous copies to a GPU.
        rank: this process (default: from torch.distributed).
        world_size: number of processes (default: from torch.distributed).
        collate_fn: samples (None for unreadable ones) -> batch, run in the workers.
        batch_keys: the keys of a batch -> the keys the dataset is asked for (e.g. with a
            scale shared by the batch); a function of the keys alone, so resuming draws the same.
        repeat_factors: times each image is drawn per pass (`samplers.repeat_factors`).
    """
    if group_ids is None:  # consecutive keys: skip them in the sampler, no bucketing needed
        sampler = TrainingSampler(len(dataset), seed=seed, start=start_iter * batch_size,
                                  rank=rank, world_size=world_size, factors=repeat_factors)
        batches: Any = BatchSampler(sampler, batch_size=batch_size, drop_last=True)
    else:
        sampler = TrainingSampler(len(dataset), seed=seed, rank=rank, world_size=world_size,
                                  factors=repeat_factors)
        batches = GroupedBatchSampler(sampler, group_ids=group_ids, batch_size=batch_size,
                                      start_batch=start_iter)
    if batch_keys is not None:
        batches = _MappedBatches(batches, batch_keys)
    return DataLoader(dataset, batch_sampler=batches, **_worker_options(num_workers),
                      collate_fn=collate_fn, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed),
                      persistent_workers=num_workers > 0)


class _MappedBatches:
    """A batch sampler whose every batch of keys goes through `fn`."""

    def __init__(self, batches: Iterable[list[Any]], fn: Callable[[list[Any]], list[Any]]
                 ) -> None:
        self.batches = batches
        self.fn = fn

    def __iter__(self) -> Iterator[list[Any]]:
        return (self.fn(batch) for batch in self.batches)


def build_test_loader(dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0,
                      pin_memory: bool = False, rank: int | None = None,
                      world_size: int | None = None,
                      collate_fn: Callable[[list[Any]], Any] = collate) -> DataLoader:
    """Loader over this rank's share of the dataset, every image once, in order."""
    sampler = InferenceSampler(len(dataset), rank=rank, world_size=world_size)
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    return DataLoader(dataset, batch_sampler=batches, **_worker_options(num_workers),
                      collate_fn=collate_fn, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0))


class CountedLoader:
    """A test loader that counts the images its batches hold: unreadable ones are dropped from
    them, and an evaluation must say how many it could not score.

    With `stop` (a training run's `StopRequest`), a stop signal ends the evaluation before its
    next batch (a COCO evaluation takes minutes; a scheduler waits seconds before it kills):
    at once with one process; with several, this one yields no more batches and sets
    `stopped`, so that the task's collectives still meet (the others may not have received
    the signal); the task calls `raise_if_stopped` before scoring (a COCO evaluation of a
    part of the split takes seconds of the grace period), and the runner checks again."""

    def __init__(self, loader: DataLoader, stop: StopRequest | None = None) -> None:
        self.loader = loader
        self.asked = len(loader.batch_sampler.sampler)  # this process's share
        self.read = 0
        self.stop = stop
        self.stopped = False

    def __iter__(self) -> Iterator[list[Any]]:
        self.read, self.stopped = 0, False
        start = last_line = time.perf_counter()
        waited = 0.0  # for batches: the loader's share of the time
        batches, done, total = iter(self.loader), 0, len(self.loader)
        share = " (this process's share)" if get_world_size() > 1 else ""
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            waited += time.perf_counter() - asked
            done += 1
            if self.stop is not None and self.stop.requested:
                self.stopped = True
                if get_world_size() == 1:
                    raise EvaluationInterrupted
                return
            self.read += len(batch)
            yield batch
            now = time.perf_counter()
            if now - last_line >= PROGRESS_SECONDS and self.read and is_main_process():
                last_line = now  # (the ETA by batches: unreadable images are not read)
                logger.info("inference: %d/%d images%s, %.3f s/image (waiting for data "
                            "%.3f), eta %s", self.read, self.asked, share,
                            (now - start) / self.read, waited / self.read,
                            format_eta((now - start) / done * (total - done)))
        if self.read and is_main_process():  # (the shares differ: 7 images are 4 and 3)
            seconds = time.perf_counter() - start
            logger.info("inference: %d images%s in %s, %.3f s/image (waiting for data %.3f)",
                        self.read, share, format_eta(seconds), seconds / self.read,
                        waited / self.read)

    def raise_if_stopped(self) -> None:
        """EvaluationInterrupted on every process when a stop signal ended this evaluation on
        any (collective when a stop request is watched: call it on every process at the same
        point, after the batches and before scoring them)."""
        if self.stop is not None and any_process(self.stopped):
            raise EvaluationInterrupted

    def report(self, logger: Any, split: str, consequence: str, *, scoring: bool = False
               ) -> dict[str, int]:
        """{"images": asked, "unreadable": not read}, over all processes (collective); a
        warning when some were not read, saying what that does to the metrics.

        Raises:
            DatasetError: with `scoring` (an evaluation tool), where no image was read:
                there is nothing to score (a training's evaluation goes on with a warning).
        """
        totals = all_reduce_sum({"asked": self.asked, "read": self.read})
        images, unreadable = int(totals["asked"]), int(totals["asked"] - totals["read"])
        if unreadable and unreadable == images:
            message = (f"{split}: none of the {images} images could be read (the warnings "
                       f"above name them): nothing was scored")
            if scoring:
                raise DatasetError(message)
            if is_main_process():  # (totals over all processes: said once)
                logger.warning("%s", message)
        elif unreadable and is_main_process():
            logger.warning("%s: %d of %d images could not be read (the warnings above name "
                           "them): %s", split, unreadable, images, consequence)
        return {"images": images, "unreadable": unreadable}


def worker_error_message(error: Exception) -> str:
    """The error's message; for one raised in a DataLoader worker (which PyTorch re-raises as
    "Caught X in DataLoader worker process N. Original Traceback ..."), the worker's own
    message without its traceback."""
    message = str(error)
    if not (message.startswith("Caught ") and "\nOriginal Traceback" in message):
        return message
    # the traceback's last "<module.>Name: message" line starts the worker's message
    lines = list(re.finditer(rf"^(?:[\w.]+\.)?{type(error).__name__}: ", message, re.M))
    return message[lines[-1].end():].strip() if lines else message
