"""SIGTERM / SIGINT / SIGHUP: the first signal lets the step in flight finish, the second stops
at once."""
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from resnet_detect.engine.data import loaders
from resnet_detect.engine.data import build_test_loader
from resnet_detect.engine import preemption
from resnet_detect.engine.preemption import stop_on_signals
from resnet_detect.detection.training import evaluate_all
from resnet_detect.segmentation.inference import evaluate_model

ROOT = Path(__file__).resolve().parents[2]


NO_SIGHUP = pytest.mark.skipif(not preemption.HANGUP, reason="no SIGHUP (Windows)")
SIGHUP = getattr(signal, "SIGHUP", 1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT,
                                    pytest.param(SIGHUP, marks=NO_SIGHUP)])
def test_first_signal_is_a_request_the_second_stops_at_once(
        signum: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        hangup_not_ignored: None) -> None:
    before = signal.getsignal(signum)
    with stop_on_signals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signum)  # delivered before the next bytecode
        assert stop.requested and stop.signal_name == signal.Signals(signum).name
        # what a second one does, as the handler does it (it said "send it again to stop at
        # once" of a SIGTERM that the grace then ignored)
        assert caplog.records[-1].getMessage().endswith(
            "(Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else
            f"(a {signal.Signals(signum).name} again within 30 s is the same request; later, "
            f"or Ctrl-C, stops at once, without saving)")
        if signum != signal.SIGINT:  # (SIGHUP: a closed terminal, which was a kill)
            # torchrun and schedulers forward the SIGTERM of a job to every process: the
            # same request, which must not cost the checkpoint (before: exit 143, nothing saved)
            os.kill(os.getpid(), signum)
            for _ in range(1000):
                pass
            assert stop.requested
            monkeypatch.setattr(preemption, "REPEAT_GRACE_S", 0.0)  # later: stop at once
        expected = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
        with pytest.raises(expected) as stopped:
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs here at the latest
                pass
        if expected is SystemExit:
            assert stopped.value.code == 128 + signum
    assert signal.getsignal(signum) is before


@NO_SIGHUP
def test_sighup_under_nohup_stays_ignored_other_ignored_signals_do_not() -> None:
    """nohup starts a run with SIGHUP ignored: the run must not stop when the terminal goes.
    A script's background job starts with SIGINT ignored: `kill -INT` still stops it cleanly."""
    before = {s: signal.signal(s, signal.SIG_IGN) for s in (SIGHUP, signal.SIGINT)}
    try:
        with stop_on_signals() as stop:
            os.kill(os.getpid(), SIGHUP)
            for _ in range(1000):
                pass
            assert not stop.requested
            assert signal.getsignal(SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
            assert stop.signal_name == "SIGINT"
        assert signal.getsignal(SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


class _SignalsItself(torch.utils.data.Dataset):
    """Every item sends `signum` to the process loading it (a loader worker)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __len__(self) -> int:
        return 2

    def __getitem__(self, key: object) -> int:
        os.kill(os.getpid(), self.signum)
        for _ in range(1000):  # a Python handler runs here at the latest
            pass
        return os.getpid()


def test_loader_workers_are_forked_on_linux_whatever_pythons_default() -> None:
    """Python 3.14 makes forkserver Linux's default: its workers import torch anew."""
    loader = build_test_loader(_SignalsItself(signal.SIGTERM), num_workers=1)
    assert loader.multiprocessing_context.get_start_method() == (
        "fork" if sys.platform == "linux" else multiprocessing.get_start_method())


# forked workers are Linux's (macOS's loaders spawn theirs: a fork after torch's import is
# unsafe there)
LINUX_FORK = pytest.mark.skipif(sys.platform != "linux", reason="loader workers fork on Linux")


@pytest.mark.parametrize("signum,start_method", [
    pytest.param(signal.SIGTERM, "fork", marks=LINUX_FORK),
    pytest.param(signal.SIGINT, "fork", marks=LINUX_FORK),
    pytest.param(SIGHUP, "fork", marks=LINUX_FORK),
    pytest.param(signal.SIGTERM, "spawn", marks=pytest.mark.slow)])  # macOS's start method
def test_loader_workers_leave_stop_signals_to_the_main_process_while_it_catches_them(
        signum: int, start_method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduler's SIGTERM to every process of a job, or Ctrl-C (the whole process group): a
    worker that died of it would fail the step in flight instead of letting the run stop
    cleanly. A spawned worker shares nothing by inheritance: it is handed the flag."""
    monkeypatch.setattr(loaders, "WORKER_START_METHOD", start_method)
    with stop_on_signals() as stop:
        (batch,) = list(build_test_loader(_SignalsItself(signum), batch_size=2, num_workers=1))
    assert len(set(batch)) == 1 and batch[0] != os.getpid() and not stop.requested


class _OpenCVThreads(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, key: object) -> int:
        import cv2
        return cv2.getNumThreads()


@pytest.mark.slow
def test_a_spawned_worker_outlives_a_ctrl_c_while_it_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawned worker (macOS, Windows) imports torch for seconds before its init function
    leaves the signals to the main process: a Ctrl-C then killed it ("DataLoader worker
    exited unexpectedly", no checkpoint). It starts with them blocked, and with one OpenCV
    thread as a forked worker has."""
    monkeypatch.setattr(loaders, "WORKER_START_METHOD", "spawn")
    with stop_on_signals() as stop:
        batches = iter(build_test_loader(_OpenCVThreads(), batch_size=2, num_workers=1))
        workers = multiprocessing.active_children()
        assert workers
        for worker in workers:  # importing torch still
            os.kill(worker.pid, signal.SIGINT)
        (batch,) = list(batches)
    assert batch == [1, 1] and not stop.requested


class _Warns(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, key: object) -> int:
        import logging
        logging.getLogger("resnet_detect.engine.data").warning("skipping unreadable image %s",
                                                               key)
        return os.getpid()


@pytest.mark.slow
def test_a_spawned_workers_warnings_reach_log_txt(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawned worker inherits no log handlers: its "skipping unreadable image" warnings
    went to stderr alone, and log.txt's count pointed at warnings it did not hold."""
    import logging

    from resnet_detect.engine.logging import setup_logging
    monkeypatch.setattr(loaders, "WORKER_START_METHOD", "spawn")
    setup_logging(tmp_path)
    try:
        (batch,) = list(build_test_loader(_Warns(), batch_size=2, num_workers=1))
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_engine_handler", False)]:
            root.removeHandler(handler)
            handler.close()
    assert batch[0] != os.getpid()
    lines = (tmp_path / "log.txt").read_text(encoding="utf-8").splitlines()
    assert [line[15:] for line in lines] == ["skipping unreadable image 0",
                                             "skipping unreadable image 1"]
    assert lines[0][2] == "/" and lines[0][8] == ":"  # "12/03 07:30:00 ": the run's format


def test_outside_training_sigterm_still_ends_a_loader_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """It is how multiprocessing ends the workers left at interpreter exit: a worker ignoring
    it would hang the exit."""
    monkeypatch.setattr(preemption.CATCHING, "value", 0)  # (1 after a test's caught stop)
    with pytest.raises(RuntimeError, match="Terminated|exited unexpectedly"):
        list(build_test_loader(_SignalsItself(signal.SIGTERM), batch_size=2, num_workers=1))


WEDGED_WORKER = """
import ctypes, multiprocessing, sys
sys.path.insert(0, sys.argv[1])
import resnet_detect.engine.preemption as preemption

def wedged():  # a loader worker stuck in native code: its Python SIGTERM handler never runs
    preemption.leave_stop_signals_to_the_parent()
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)
    libc.pthread_mutex_init(mutex, None)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)

worker = multiprocessing.get_context("fork").Process(target=wedged, daemon=True)
worker.start()
preemption.WORKER_EXIT_GRACE_S = 0.5
print(worker.pid, flush=True)
"""


@LINUX_FORK
def test_a_worker_wedged_in_native_code_does_not_hang_the_interpreter_exit() -> None:
    """multiprocessing joins its daemonic children at exit without a timeout, after a SIGTERM
    that such a worker never handles: it is killed instead."""
    result = subprocess.run([sys.executable, "-c", WEDGED_WORKER, str(ROOT)], timeout=60,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    pid = int(result.stdout.split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


LOADER_LEFT_RUNNING = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from resnet_detect.engine.data import build_train_loader

class Zeros(torch.utils.data.Dataset):
    def __len__(self):
        return 1000
    def __getitem__(self, key):
        return {"x": torch.zeros(4)}

batches = iter(build_train_loader(Zeros(), batch_size=2, num_workers=1))
next(batches)
raise SystemExit("the run's own error")  # its loader's worker is still running
"""


def test_loader_workers_left_at_an_error_exit_end_without_a_traceback() -> None:
    """PyTorch's loader raises from its SIGCHLD handler when a worker dies of a signal, which
    the exit hook sends: after a run's own error, a second, unrelated traceback followed."""
    result = subprocess.run([sys.executable, "-c", LOADER_LEFT_RUNNING, str(ROOT)], timeout=60,
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == "the run's own error", result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr


def test_a_stop_request_ends_an_evaluation_at_once_alone_or_after_its_batches_with_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One process raises at the next batch; one of several stops reading (its task's
    collectives must still meet the others', which may not have the signal) and says so."""
    stop = preemption.StopRequest()
    counted = loaders.CountedLoader(build_test_loader(list(range(10)), batch_size=2), stop)
    seen = []
    with pytest.raises(preemption.EvaluationInterrupted):
        for batch in counted:
            seen.append(batch)
            stop.signum = signal.SIGTERM
    assert len(seen) == 1 and counted.read == 2 and counted.stopped
    monkeypatch.setattr(loaders, "get_world_size", lambda: 2)
    stop.signum = None
    counted = loaders.CountedLoader(build_test_loader(list(range(10)), batch_size=2), stop)
    seen = []
    for batch in counted:
        seen.append(batch)
        stop.signum = signal.SIGTERM
    assert len(seen) == 1 and counted.read == 2 and counted.stopped
    stop.signum = None
    assert sum(len(b) for b in counted) == 10 and not counted.stopped  # read again in full


class _Model(torch.nn.Module):
    """Stands in for a detector or a segmenter: one empty result per image."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(3))

    def forward(self, images: list, output_sizes: Any = None) -> list:
        return [{"mask": torch.zeros(2, 2, dtype=torch.long)} for _ in images]

    def inference(self, images: list, output_sizes: Any = None, pasted: bool = True) -> list:
        return self(images, output_sizes)


class _Evaluator:
    def __init__(self) -> None:
        self.processed, self.scored = 0, False

    def reset(self) -> None:
        self.processed = 0

    def process(self, *args: Any) -> None:
        self.processed += 1

    def evaluate(self, *args: Any) -> dict:
        self.scored = True
        return {}


@pytest.mark.parametrize("evaluate", [evaluate_all, evaluate_model])
def test_a_stopped_evaluation_of_several_processes_is_not_scored(
        evaluate: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With several processes each stops reading, then all stop before scoring: rank 0 scored
    the part of the split read (seconds of COCOeval at COCO scale, of a scheduler's grace
    period) and wrote it over the last evaluation's results file."""
    monkeypatch.setattr(loaders, "get_world_size", lambda: 2)
    sample = {"image": torch.zeros(3, 2, 2), "height": 2, "width": 2,
              "gt_sem_seg": torch.zeros(2, 2, dtype=torch.long)}
    stop = preemption.StopRequest()
    counted = loaders.CountedLoader(build_test_loader([sample] * 6, batch_size=2), stop)
    evaluator = _Evaluator()
    real_process = evaluator.process

    def process(*args: Any) -> None:
        real_process(*args)
        stop.signum = signal.SIGTERM  # after the first batch
    evaluator.process = process
    with pytest.raises(preemption.EvaluationInterrupted):
        evaluate(_Model(), counted, evaluator)
    assert evaluator.processed == 1 and not evaluator.scored


WORKER_BUSY_WHEN_SIGNALLED = """
import ctypes, multiprocessing, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from resnet_detect.engine.data import build_train_loader
from resnet_detect.engine.preemption import StopRequest, stop_on_signals

BUSY = multiprocessing.get_context("fork").Event()
CALLS = [0]

class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

def native_wait(seconds):  # Python handlers run after it: POSIX never ends it with EINTR
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)
    libc.pthread_mutex_init(mutex, None)
    libc.pthread_mutex_lock(mutex)
    until = time.time() + seconds
    libc.pthread_mutex_timedlock(mutex, ctypes.byref(Timespec(int(until),
                                                              int(until % 1 * 1e9))))

class Decoding(torch.utils.data.Dataset):
    def __len__(self):
        return 1000
    def __getitem__(self, key):
        CALLS[0] += 1
        if CALLS[0] == 3:  # a batch in native code when the job is signalled
            BUSY.set()
            native_wait(1.5)
        return {"x": torch.zeros(4)}

stop = StopRequest()
batches = iter(build_train_loader(Decoding(), batch_size=1, num_workers=1))
with stop_on_signals(stop):
    next(batches)
    assert BUSY.wait(30)
    time.sleep(0.5)  # (the worker is in native_wait by then)
    for process in multiprocessing.active_children():
        os.kill(process.pid, signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
assert stop.requested
time.sleep(2.5)  # the checkpoint's save: the worker handles the signal meanwhile
print("saved", flush=True)
"""


@LINUX_FORK
def test_a_worker_that_handles_the_jobs_sigterm_after_the_stop_still_leaves_it_to_the_run(
        ) -> None:
    """A worker busy in native code (decoding an image) runs its Python handler late, after
    the main process has finished its step and stopped catching: it killed itself then, and
    PyTorch's SIGCHLD handler failed the checkpoint's save ("DataLoader worker ... is killed
    by signal: Terminated")."""
    result = subprocess.run([sys.executable, "-c", WORKER_BUSY_WHEN_SIGNALLED, str(ROOT)],
                            timeout=120, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.split() == ["saved"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_a_sigterm_among_several_processes_says_the_save_needs_them_all(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """torchrun sends SIGTERM to every process when one died (kill -9, out of memory): the
    survivors said "then saving a checkpoint" and failed on the dead one, saving nothing."""
    said = {}
    for world_size, signum in (("2", signal.SIGTERM), ("1", signal.SIGTERM),
                               ("2", signal.SIGINT)):
        monkeypatch.setenv("WORLD_SIZE", world_size)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            preemption.StopRequest()._handle(signum, None)
        said[world_size, signum] = "if every process is still there" in caplog.text
        assert "then saving a checkpoint" in caplog.text
    assert said == {("2", signal.SIGTERM): True, ("1", signal.SIGTERM): False,
                    ("2", signal.SIGINT): False}


def test_a_launchers_sigterm_after_another_signal_is_named_as_such(
        caplog: pytest.LogCaptureFixture) -> None:
    """SIGHUP to the job, then torchrun's forwarded SIGTERM: "received SIGTERM again", though
    no SIGTERM came first."""
    stop = preemption.StopRequest()
    with caplog.at_level(logging.WARNING):
        stop._handle(signal.SIGHUP, None)
        stop._handle(signal.SIGTERM, None)
        stop._handle(signal.SIGTERM, None)
    assert stop.signum == signal.SIGHUP
    said = [r.getMessage() for r in caplog.records if "a launcher forwarding it" in r.getMessage()]
    assert said == ["received SIGTERM after SIGHUP (a launcher forwarding it): still finishing "
                    "the step and saving"] * 2
