"""Console logging, tensorboard scalars and the progress line (iteration, losses, lr, it/s,
data time, ETA).

Only the main process writes tensorboard events and INFO lines; other ranks log warnings.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import datetime
import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .distributed import all_reduce_sum, get_rank, is_main_process
from .files import UnwritableFolderError, atomic_write_text, writable_folder

if TYPE_CHECKING:
    from .trainer import Trainer


# set while a tool's command line runs (cli.run_tool): whether it prints an error as its own
# "error:" line, which the line saying why a training stopped would repeat on the console
SAYS_ITS_ERROR: contextvars.ContextVar[Callable[[BaseException], bool] | None] = (
    contextvars.ContextVar("says_its_error", default=None))
# a record's `extra` key that keeps it off the console (log.txt has it)
FILE_ONLY = "file_only"


def setup_logging(output_dir: str | os.PathLike | None = None, name: str = "") -> None:
    """INFO to stdout on the main process (WARNING elsewhere), and to output_dir/log.txt;
    another process's warnings and errors (an unreadable image it read, why it stopped: on
    another machine its console is out of sight) to output_dir/log.txt.rank<N>, made at its
    first one (detectron2's name).

    Raises:
        ValueError: output_dir is a file, or cannot be made or written to.
    """
    root = logging.getLogger(name)
    root.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    for handler in list(root.handlers):
        if getattr(handler, "_engine_handler", False):
            root.removeHandler(handler)
    prefix = "" if is_main_process() else f"[rank {get_rank()}] "
    # the date too: log.txt of a resumed run holds several days
    fmt = logging.Formatter(f"%(asctime)s {prefix}%(message)s", datefmt="%m/%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    handlers[0].addFilter(lambda record: not getattr(record, FILE_ONLY, False))
    if output_dir is not None and is_main_process():
        folder = writable_folder(output_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # a file name that is no UTF-8 (a Windows zip unpacked here) logs escaped
            handlers.append(logging.FileHandler(folder / "log.txt", encoding="utf-8",
                                                errors="backslashreplace"))
        except OSError as e:  # what writable_folder cannot foresee (log.txt a folder, ...)
            raise UnwritableFolderError(f"cannot write to the output folder {folder}: "
                                        f"{e.strerror or e} ({e.filename or folder}); name a "
                                        f"folder you can write to") from e
    elif output_dir is not None:
        try:  # (a node without the shared folder: its console alone)
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(Path(output_dir) / rank_log_name(get_rank()),
                                                encoding="utf-8", errors="backslashreplace",
                                                delay=True))
        except OSError:
            pass
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._engine_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)


@contextlib.contextmanager
def logging_kept(name: str = "") -> Iterator[None]:
    """Within the context setup_logging may change the logger; after it, its level and
    handlers are as before and the handlers added within are closed (a Python caller's own
    lines after a run no longer go to the run's log.txt, which is closed)."""
    logger = logging.getLogger(name)
    level, handlers = logger.level, list(logger.handlers)
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.setLevel(level)


def rank_log_name(rank: int | str) -> str:
    """The file of process `rank`'s warnings and errors beside log.txt (rank 0's is log.txt)."""
    return f"log.txt.rank{rank}"


def log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                file: Any = None, line: str | None = None) -> None:
    """The tools' `warnings.showwarning`: a warning (an AP of 0 for want of detections,
    objects left out of the mask AP) is a line of the console and of the run's log.txt,
    where its record is read, as the run's own warnings are, and not of stderr alone."""
    if file is not None:  # asked for a stream by name: Python's own behaviour
        file.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    # (the line that warned: noise to a reader of the run's log, often a contextlib frame)
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)


def escape_what_the_console_lacks(*streams: Any) -> None:
    """A class name the console's encoding lacks (cp1252 on Windows, a redirect) prints
    escaped instead of stopping the run."""
    for stream in streams:
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def handler_settings() -> tuple[int, list[tuple[str | None, str | None, str | None]]]:
    """The root logger's level and setup_logging's handlers as (log file, or None for
    stdout; format; date format): what a spawned process (a loader worker on macOS or
    Windows, which inherits no handlers) needs to log as this one does."""
    root = logging.getLogger()
    handlers = []
    for handler in root.handlers:
        if getattr(handler, "_engine_handler", False) and handler.formatter is not None:
            path = handler.baseFilename if isinstance(handler, logging.FileHandler) else None
            handlers.append((path, handler.formatter._fmt, handler.formatter.datefmt))
    return root.level, handlers


def set_up_handlers(settings: tuple[int, list[tuple[str | None, str | None, str | None]]]
                    ) -> None:
    """In a spawned process: log as the process whose `handler_settings()` these are (its
    log.txt appended to)."""
    level, handlers = settings
    escape_what_the_console_lacks(sys.stdout)  # as the tools' console (engine.cli.run_tool)
    root = logging.getLogger()
    root.setLevel(level)
    for path, fmt, datefmt in handlers:
        handler = (logging.StreamHandler(sys.stdout) if path is None
                   else logging.FileHandler(path, encoding="utf-8", errors="backslashreplace",
                                            delay=True))  # (a rank's file: at its first line)
        handler.setFormatter(logging.Formatter(fmt, datefmt=datefmt))
        handler._engine_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    warnings.showwarning = log_warning


_SAID_ONCE: set[str] = set()


def warn_once(log: logging.Logger, message: str) -> None:
    """`message` as a warning of `log`, once per process (a tool reads its config, or
    builds its model, more than once)."""
    if message not in _SAID_ONCE:
        _SAID_ONCE.add(message)
        log.warning(message)


def print_and_log(text: str) -> None:
    """Print `text` (a results table, a summary line) as it is, and write it into the log.txt
    that setup_logging opened, so that the file holds the whole run. A console that is gone
    (a closed ssh terminal, `| head`) leaves log.txt to hold it: the run goes on."""
    try:
        print(text, flush=True)
    except OSError:  # EIO, a broken pipe
        pass
    record = logging.LogRecord("engine", logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_engine_handler", False) and isinstance(handler,
                                                                       logging.FileHandler):
            handler.handle(record)


class ScalarWriter:
    """Tensorboard SummaryWriter on the main process, and the same scalars as JSON lines
    ({"iteration": i, "train/loss_cls": ..., ...} per call) in `jsonl`, for scripts and plots;
    a no-op elsewhere or without log_dir.

    A run that starts at `start_iter` (0: afresh) drops what earlier runs logged after it
    (the steps a crash lost and that are trained again, a course abandoned with
    --resume-from, a finished run's whole record), from both; `evaluated_again`: the
    evaluation at `start_iter` too (it runs again: one line per evaluation).
    """

    def __init__(self, log_dir: str | os.PathLike | None,
                 jsonl: str | os.PathLike | None = None, start_iter: int = 0, *,
                 evaluated_again: bool = False) -> None:
        self._writer = None
        self._jsonl = Path(jsonl) if jsonl is not None and is_main_process() else None
        kept: list[str] = []
        # written at the start, empty where nothing is kept: a run that logged nothing yet
        # (a folder in the file's place: warned of at the first write)
        if self._jsonl is not None and not self._jsonl.is_dir():
            if self._jsonl.is_file():
                kept = [line for line in self._jsonl.read_text(encoding="utf-8").splitlines()
                        if (entry := _entry(line)) is not None
                        and (entry["iteration"] < start_iter or entry["iteration"] == start_iter
                             and not (evaluated_again and _is_evaluation(entry)))]
            atomic_write_text("".join(line + "\n" for line in kept), self._jsonl)
        if log_dir is not None and is_main_process():
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when used
            # tensorboard purges whole steps: the evaluation's step goes too, and the progress
            # line kept there is written again
            self._writer = SummaryWriter(log_dir=str(log_dir),
                                         purge_step=start_iter + (not evaluated_again))
            for entry in map(_entry, kept if evaluated_again else []):
                if entry is not None and entry["iteration"] == start_iter:
                    for key, value in entry.items():
                        if key != "iteration" and isinstance(value, (int, float)):
                            self._writer.add_scalar(key, value, start_iter)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write them; a destination that fails (a full disk, a folder in the file's place)
        is warned of and written no more, and the run goes on (the checkpoints say what a
        full disk costs)."""
        if self._writer is not None:
            try:
                for key, value in values.items():
                    self._writer.add_scalar(key, value, step)
            except OSError as e:
                self._give_up("tensorboard", step, e)
                writer, self._writer = self._writer, None
                with contextlib.suppress(Exception):  # (its flush fails alike)
                    writer.close()
        if self._jsonl is not None:  # appended: a resumed run goes on in the same file
            try:
                with open(self._jsonl, "a", encoding="utf-8") as f:
                    # JSON has no NaN (an AP of a size without objects): null, as metrics.json
                    numbers = {k: float(v) for k, v in values.items()}
                    f.write(json.dumps({"iteration": int(step), **{
                        k: v if math.isfinite(v) else None for k, v in numbers.items()}},
                        allow_nan=False) + "\n")
            except OSError as e:
                self._give_up(str(self._jsonl), step, e)
                self._jsonl = None

    @staticmethod
    def _give_up(where: str, step: int, error: OSError) -> None:
        logging.getLogger(__name__).warning(
            "cannot write the scalars of iteration %d to %s (%s: %s): no more are written "
            "there; training goes on", step, where, type(error).__name__,
            error.strerror or error)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def logs_evaluation(jsonl: Path, iteration: int) -> bool:
    """Whether `jsonl` (a run's scalars.jsonl) holds an evaluation's line at `iteration`.
    False for a file that is not there."""
    return jsonl.is_file() and any(
        entry is not None and entry["iteration"] == iteration and _is_evaluation(entry)
        for entry in map(_entry, jsonl.read_text(encoding="utf-8").splitlines()))


def _entry(line: str) -> dict[str, Any] | None:
    """A scalars.jsonl line's object, its iteration an int; None for a line a kill cut short."""
    try:
        entry = json.loads(line)
        entry["iteration"] = int(entry["iteration"])
        return entry
    except (ValueError, KeyError, TypeError):
        return None


def _is_evaluation(entry: Mapping[str, Any]) -> bool:
    """An evaluation's line: a scalar outside train/ (a progress line's)."""
    return any(k != "iteration" and not k.startswith("train/") for k in entry)


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


ETA_STEPS = 1000


class ProgressLogger:
    """Hook: every `period` iterations, log mean losses (each over the steps of the period
    that gave it, and over all processes), the lr of the last step, it/s and the time spent
    waiting for batches (over the steps alone: evaluations and checkpoints between them do
    not count), the ETA at the median step time of the last ETA_STEPS steps (detectron2's:
    a slow first step after a start does not stretch it), and peak GPU memory; also as
    tensorboard scalars.

    Args:
        period: iterations between lines (the last iteration is always logged).
        writer: where scalars go.
        logger: the python logger of the progress line.
        slow_data_hint: what to try where the steps wait for their batches more than half
            of their time (said once, from the second line on: the first waits for the
            loader's start).
    """

    def __init__(self, period: int, writer: ScalarWriter | None = None,
                 logger: logging.Logger | None = None, per_epoch: int | None = None,
                 slow_data_hint: str | None = None) -> None:
        if period <= 0:
            raise ValueError(f"log period must be positive, got {period}")
        self.period = period
        self.per_epoch = per_epoch  # iterations per epoch of an epoch-based run: shown
        self.writer = writer or ScalarWriter(None)
        self.logger = logger or logging.getLogger(__name__)
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._empty_batches = 0  # of the window's steps: every image unreadable
        self._steps = self._seconds = self._data_seconds = 0.0
        self._grad: list[Any] = [0.0, 0.0]  # sum and count of the finite gradient norms
        self.slow_data_hint = slow_data_hint
        self._lines = 0
        self._recent_steps: collections.deque[float] = collections.deque(maxlen=ETA_STEPS)

    def before_train(self, trainer: Trainer) -> None:
        self._start_time = time.perf_counter()

    def after_step(self, trainer: Trainer) -> None:
        counted = 1 if trainer.losses_count else 0  # 0: zeros standing in for a batch
        self._empty_batches += trainer.empty_batches
        for key, value in trainer.loss_dict.items():  # a skipped batch gives other keys
            self._sums[key] = self._sums.get(key, 0.0) + value.detach().float() * counted
            self._counts[key] = self._counts.get(key, 0) + counted
        norm = getattr(trainer, "grad_norm", None)
        if norm is not None:  # the mean of the finite ones (fp16 overflows skip their step)
            finite = torch.isfinite(norm)
            self._grad[0] = self._grad[0] + torch.where(finite, norm.detach().float(), 0.0)
            self._grad[1] = self._grad[1] + finite.float()
        self._steps += 1
        self._seconds += trainer.step_seconds
        self._recent_steps.append(trainer.step_seconds)
        self._data_seconds += trainer.data_seconds
        if trainer.iter % self.period and trainer.iter != trainer.max_iter:
            return
        # over the steps of every process that gave each loss
        totals = all_reduce_sum({**self._sums, **{f"{k}/count": n
                                                  for k, n in self._counts.items()},
                                 "grad_norm": self._grad[0], "grad_norm/count": self._grad[1]})
        losses = {k: totals[k] / totals[f"{k}/count"] for k in self._sums
                  if totals[f"{k}/count"] > 0}
        losses["total_loss"] = sum(losses.values())
        grad_norm = (float(totals["grad_norm"]) / float(totals["grad_norm/count"])
                     if float(totals["grad_norm/count"]) > 0 else None)
        self._grad = [0.0, 0.0]
        its = self._steps / max(self._seconds, 1e-9)
        data_time = self._data_seconds / self._steps
        waiting = self._data_seconds / max(self._seconds, 1e-9)
        self._lines += 1
        # (steps of unreadable batches wait for the loader's failed reads: the warnings name
        # the files, and more workers would not help)
        if (self.slow_data_hint and self._lines >= 2 and waiting > 0.5
                and not self._empty_batches):
            self.logger.warning("the steps before iteration %d waited for their batches %d%% "
                                "of their time: the data loading is the bottleneck; %s",
                                trainer.iter, round(100 * waiting), self.slow_data_hint)
            self.slow_data_hint = None  # once
        self._sums, self._counts, self._empty_batches = {}, {}, 0
        self._steps = self._seconds = self._data_seconds = 0.0
        lr = trainer.step_lr
        eta = format_eta((trainer.max_iter - trainer.iter) * statistics.median(self._recent_steps))
        terms = "  ".join(f"{k}={v:.4f}" for k, v in sorted(losses.items()))
        memory = ""
        scalars = {"train/lr": lr, "train/it_per_s": its, "train/data_time": data_time}
        if grad_norm is not None:  # (train.clip_grad_norm: the norm before clipping)
            terms += f"  grad_norm={grad_norm:.4g}"
            scalars["train/grad_norm"] = grad_norm
        if trainer.device_type == "cuda":
            gib = torch.cuda.max_memory_allocated() / 2 ** 30
            memory = f"  max_mem {gib:.1f} GiB"
            scalars["train/max_mem_gib"] = gib
        epoch = ""
        if self.per_epoch:
            epoch = (f" (epoch {-(-trainer.iter // self.per_epoch)}/"
                     f"{-(-trainer.max_iter // self.per_epoch)})")
        self.logger.info("iter %d/%d%s  %s  lr=%.5g  %.2f it/s  data %.3f s%s  eta %s",
                         trainer.iter, trainer.max_iter, epoch, terms, lr, its, data_time,
                         memory, eta)
        self.writer.add_scalars({**{f"train/{k}": v for k, v in losses.items()}, **scalars},
                                trainer.iter)

    def after_train(self, trainer: Trainer) -> None:
        total = time.perf_counter() - self._start_time
        self.logger.info("trained %d iterations in %s", trainer.iter - trainer.start_iter,
                         format_eta(total))
