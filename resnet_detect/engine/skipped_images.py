"""Training images that could not be read: counted over every process (said at the end, kept
in the checkpoints), and training stopped where most images of the last steps were
unreadable."""
from __future__ import annotations

import logging
from typing import Any

from .distributed import all_reduce_sum, is_main_process
from .task_api import TaskData

# steps between checks of the share of unreadable training images
UNREADABLE_WINDOW = 20


class UnreadableDataError(RuntimeError):
    """Most training images of the last steps could not be read: the data, not a few files,
    is wrong (a folder that is not the JSON's, sizes that are not the images', a lost mount)."""


class SkipCounter:
    """Counts the images the loader dropped (unreadable) on this process, drawn
    `batches_per_step` batches a step."""

    def __init__(self, batches_per_step: int = 1, data_keys: str = "data.train and the "
                 "images") -> None:
        self.data_keys = data_keys  # where the training images are set, for the message
        self.count = 0
        self.before = 0  # over all processes, in the steps before the checkpoint resumed from
        self.batches_per_step = batches_per_step
        self._window = [0, 0, 0]  # unreadable images, images, batches since the last check

    def add_batch(self, batch_size: int, kept: int, iteration: int) -> None:
        """Count one drawn batch; every `UNREADABLE_WINDOW` steps (on every process: the
        check is collective) stop if more than half of the window's images were unreadable,
        rather than train on nothing until the end of the schedule."""
        self.count += batch_size - kept
        window = self._window
        window[0] += batch_size - kept
        window[1] += batch_size
        window[2] += 1
        if window[2] < UNREADABLE_WINDOW * self.batches_per_step:
            return
        totals = all_reduce_sum({"unreadable": window[0], "read": window[1]})
        self._window = [0, 0, 0]
        if totals["unreadable"] * 2 > totals["read"]:
            raise UnreadableDataError(
                f"{totals['unreadable']:.0f} of the {totals['read']:.0f} training images read "
                f"in iterations {iteration + 2 - UNREADABLE_WINDOW}-{iteration + 1} could not "
                f"be read (the warnings above name them and why): training stopped. Check "
                f"{self.data_keys}; then --resume continues from the last checkpoint, where "
                f"one was written")

    def total(self) -> int:
        """The count over all processes and the whole run (collective)."""
        return self.before + int(all_reduce_sum({"n": self.count})["n"])

    def report(self, logger: logging.Logger, split: str) -> int:
        """Log `total()` (collective); returns it."""
        total = self.total()
        if total and is_main_process():  # (the sum over all processes: said once)
            logger.warning("%s: skipped %d unreadable image reads", split, total)
        return total


def first_readable_batch(data: TaskData) -> Any:
    """A batch of the first training image that reads (for a process whose own batch had
    none under DDP, before it read any)."""
    for index in range(len(data.train)):
        sample = data.train[(index, 0)]
        if sample is not None:
            return data.collate([sample])
    raise UnreadableDataError("no training image could be read (the warnings above name them "
                              "and why)")
