"""Stopping a run cleanly on SIGTERM (a scheduler preempting the job), SIGINT (Ctrl-C) or
SIGHUP (the terminal or ssh session the run was started in closing; where the platform has it).

The first signal only sets a flag: the trainer finishes the step in flight, every process
agrees to stop at the same iteration, the runner writes a checkpoint and raises
`TrainingInterrupted`. A second signal stops at once (the usual Ctrl-C behaviour), except a
SIGTERM or SIGHUP within `REPEAT_GRACE_S` of the first: schedulers signal every process of a
job and launchers such as torchrun forward it once more, which must not cost the checkpoint.
Loader workers leave the signals to the main process while it catches them, and after it
caught one, so a signal sent to every process of a job (Ctrl-C, a scheduler's SIGTERM to the
process group) stops the run cleanly instead of killing the workers under the step in flight
or under the checkpoint's save.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from .distributed import environment_world_size

logger = logging.getLogger(__name__)
# (SIGHUP: the terminal's process group gets it when the terminal goes; not on Windows)
HANGUP = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, *HANGUP)
# One byte of shared memory, 1 while the main process catches the stop signals and after it
# caught one (until its exit ends the workers): forked loader workers inherit it, spawned
# ones (macOS's start method) receive it with their init function
CATCHING = multiprocessing.RawValue("b", 0)
WORKER_EXIT_GRACE_S = 5.0
REPEAT_GRACE_S = 30.0  # a SIGTERM this soon after the first is the same request, forwarded


class TrainingInterrupted(Exception):
    """A signal stopped training after a checkpoint was written.

    Attributes:
        signal_name: "SIGTERM", "SIGINT" or "SIGHUP".
        iteration: the steps done (and saved).
        exit_code: 128 + the signal number, as a shell reports a process the signal ended.
    """

    def __init__(self, message: str, *, signal_name: str, iteration: int, exit_code: int) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.iteration = iteration
        self.exit_code = exit_code


class EvaluationInterrupted(Exception):
    """A stop signal ended an evaluation before its last batch: its metrics are not the
    model's (the run saves a checkpoint and stops, as it does between steps)."""


class StopRequest:
    """The first stop signal received while installed (None: none)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._since = 0.0  # time.monotonic() of the first signal

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: stop now, saving nothing
            if signum != signal.SIGINT and time.monotonic() - self._since < REPEAT_GRACE_S:
                logger.warning("received %s %s (a launcher forwarding it): still finishing "
                               "the step and saving", signal.Signals(signum).name,
                               "again" if signum == self.signum else f"after {self.signal_name}")
                return
            signal.signal(signum, signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        self._since = time.monotonic()
        name = signal.Signals(signum).name
        again = ("Ctrl-C again stops at once, without saving" if signum == signal.SIGINT else
                 f"a {name} again within {REPEAT_GRACE_S:.0f} s is the same request; later, "
                 f"or Ctrl-C, stops at once, without saving")
        # torchrun signals every process when one of them died: the step's collectives
        # then fail and nothing is saved
        peers = (", if every process is still there" if signum == signal.SIGTERM
                 and environment_world_size() > 1 else "")
        logger.warning("received %s: finishing the current step (or ending the evaluation), "
                       "then saving a checkpoint%s (%s)", name, peers, again)


def _under_nohup(signum: int) -> bool:
    """SIGHUP ignored since the start (nohup): it stays ignored, the run goes on when the
    terminal goes. (A SIGINT or SIGTERM ignored, as a script's background job has SIGINT,
    still stops a run cleanly when sent.)"""
    return signum in HANGUP and signal.getsignal(signum) is signal.SIG_IGN


@contextmanager
def stop_on_signals(request: StopRequest | None = None) -> Iterator[StopRequest]:
    """Catch the stop signals into `request` (a new `StopRequest` when None) while the block
    runs, then restore the previous handlers; SIGHUP under nohup stays ignored. Outside the
    main thread (where Python cannot catch signals) the request never fires."""
    request = request if request is not None else StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request._handle) for s in STOP_SIGNALS
                if not _under_nohup(s)}
    catching = CATCHING.value  # (1 under engine.cli.run_tool, which catches SIGTERM too)
    CATCHING.value = 1
    try:
        yield request
    finally:
        # After a caught stop the workers keep leaving SIGTERM to this process, which ends
        # them: one busy in native code when the job was signalled runs its handler only now,
        # and dying of it would fail the checkpoint's save (PyTorch's SIGCHLD handler raises)
        CATCHING.value = 1 if request.requested else catching
        for s, handler in previous.items():
            signal.signal(s, handler)


def leave_stop_signals_to_the_parent(catching: Any = CATCHING) -> None:
    """In a loader worker: ignore SIGTERM (and SIGHUP) while the main process catches it or
    has caught one (it stops the run, then ends its workers itself); otherwise, and when the
    parent is gone, it ends the worker as by default, which is how multiprocessing ends the
    workers left at exit. Ctrl-C is always ignored: it reaches the whole foreground process
    group, and the main process decides. `catching`: the main process's `CATCHING` (a spawned
    worker's own is not it)."""
    parent = os.getppid()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if catching.value and os.getppid() == parent:
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, *HANGUP):
        if not _under_nohup(signum):
            signal.signal(signum, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C pending since the start: dropped
    if hasattr(signal, "pthread_sigmask"):  # blocked until now in a spawned worker
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _spawn_with_signals_blocked(spawnv: Any) -> Any:
    def spawn(*args: Any) -> Any:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return spawnv(*args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return spawn


class _SignalsBlockedSpawnProcess(multiprocessing.context.SpawnProcess):
    """Starts with SIGTERM and SIGINT blocked (the child inherits the mask), so that a Ctrl-C
    while it imports torch, seconds before its init function leaves the signals to the main
    process, does not kill it, and the run with it. Only the fork/exec runs blocked here: the
    pickled dataset is written to the child after it, while the child unpickles (seconds),
    and a second Ctrl-C then must still stop the main process at once."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        from multiprocessing import popen_spawn_posix, util
        spawnv = util.spawnv_passfds
        util.spawnv_passfds = _spawn_with_signals_blocked(spawnv)
        try:
            return popen_spawn_posix.Popen(process_obj)
        finally:
            util.spawnv_passfds = spawnv


class _SignalsBlockedSpawnContext(multiprocessing.context.SpawnContext):
    Process = _SignalsBlockedSpawnProcess


def worker_context(method: str | None) -> multiprocessing.context.BaseContext:
    """The multiprocessing context of loader workers started by `method` (None: Python's
    default). A forked worker runs its init function at once; a spawned one (macOS, Windows)
    first imports torch, and starts with the stop signals blocked where POSIX allows it."""
    context = multiprocessing.get_context(method)
    if context.get_start_method() == "spawn" and hasattr(signal, "pthread_sigmask"):
        return _SignalsBlockedSpawnContext()
    return context


def _end_leftover_workers() -> None:
    """At exit, before multiprocessing joins its daemonic children without a timeout: a
    worker stuck in native code never runs its Python SIGTERM handler, so the ones still
    alive after `WORKER_EXIT_GRACE_S` are killed instead of hanging the exit."""
    workers = [p for p in multiprocessing.active_children() if p.daemon]
    CATCHING.value = 0  # (still 1 after a caught stop) the workers' SIGTERM ends them now
    if (workers and threading.current_thread() is threading.main_thread()
            and hasattr(signal, "SIGCHLD")):  # Windows has none
        # PyTorch's loader raises from its SIGCHLD handler for a worker ended by a signal,
        # which is what this does: a traceback after the run's own error, at exit
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in workers:
        worker.terminate()
    deadline = time.monotonic() + WORKER_EXIT_GRACE_S
    for worker in workers:
        worker.join(timeout=max(deadline - time.monotonic(), 0.0))
        if worker.is_alive():
            worker.kill()
            worker.join()


# registered after multiprocessing's own exit hook (imported above), so it runs first
atexit.register(_end_leftover_workers)
