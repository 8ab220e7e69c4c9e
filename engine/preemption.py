"""Stopping a run cleanly on SIGTERM (a scheduler preempting the job) or SIGINT (Ctrl-C).

The first signal only sets a flag: the trainer finishes the step in flight, every process
agrees to stop at the same iteration, the runner writes a checkpoint and raises
`TrainingInterrupted`. A second signal stops at once (the usual Ctrl-C behaviour).
"""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """A signal stopped training after a checkpoint was written.

    Attributes:
        signal_name: "SIGTERM" or "SIGINT".
        iteration: the steps done (and saved).
        exit_code: 128 + the signal number, as a shell reports a process the signal ended.
    """

    def __init__(self, message: str, *, signal_name: str, iteration: int, exit_code: int) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.iteration = iteration
        self.exit_code = exit_code


class StopRequest:
    """The first stop signal received while installed (None: none)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: stop now, saving nothing
            signal.signal(signum, signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        logger.warning("received %s: finishing the current step, then saving a checkpoint "
                       "(send it again to stop at once, without saving)",
                       signal.Signals(signum).name)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch SIGTERM and SIGINT into a `StopRequest` while the block runs, then restore the
    previous handlers. Outside the main thread (where Python cannot catch signals) the
    request never fires."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request._handle) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
