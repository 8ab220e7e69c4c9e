"""The command line that every config-driven tool shares: CONFIG and key=value overrides, and
the training tools' whole main (parse, pick the task, run it)."""
from __future__ import annotations

import argparse
import copy
import difflib
import errno
import logging
import os
import re
import signal
import sys
import threading
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import cv2
from omegaconf import OmegaConf

from .amp import amp_for_device
from .distributed import (barrier, cleanup, collective_timeout_s, environment_world_size,
                          init_distributed, is_main_process, other_process_gone,
                          training_device_type)
from .checkpoint import (CheckpointWriteError, UnreadableCheckpointError,
                         read_training_checkpoint)
from .config import PACKAGE_PREFIX, ConfigError, parse_bool
from .custom_imports import config_hooks
from .data import DatasetError, UnreadableImageError, worker_error_message
from .data.images import silence_opencv_log
from .export import ExportError
from .files import UnwritableFolderError, missing_path
from .foreign_options import flag_hints
from .host_memory import cache_host_memory
from .logging import (SAYS_ITS_ERROR, escape_what_the_console_lacks, log_warning, logging_kept,
                      print_and_log, setup_logging)
from .model_check import weights_keys
from .preemption import CATCHING, TrainingInterrupted
from .restarts import resume_after_restart
from .run_lock import FolderInUseError
from .runner import check_training_config, run_training
from .skipped_images import UnreadableDataError
from .same_everywhere import OtherProcessFailed, done_everywhere
from .trainer import NonFiniteLossError
from .tasks import (TASK_MODULES, config_task, load_task_config, task_defaults,
                    task_module)


# Raised only for what a user gave (their messages name the key, file, entry or folder):
# printed as the message alone; a traceback would bury it and say nothing more
# NonFiniteLossError: a learning rate too high for the run (its message says what to change)
USER_ERRORS = (CheckpointWriteError, ConfigError, DatasetError, ExportError, FileNotFoundError,
               FolderInUseError, NonFiniteLossError, OtherProcessFailed,
               UnreadableCheckpointError, UnreadableDataError, UnreadableImageError,
               UnwritableFolderError)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `docker stop`, a CI's cancel) as Ctrl-C is: an exception, so that
    what a tool leaves half written (an export's model.onnx.partial, a converter's temporary
    file) is removed as for Ctrl-C; by default the signal ended the process at once."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


# `python -m resnet_detect train` (or `resnet-detect train`) where resnet_detect's __main__
# runs the tool: its usage line and messages name it so, not by its file (train.py)
PROGRAM: str | None = None


def program_name() -> str:
    """The running tool as the user ran it, for argparse's prog and the error messages."""
    return PROGRAM or Path(sys.argv[0]).name


def runs_as_installed() -> bool:
    """Whether the tool runs through resnet_detect's __main__ or is the installed package's
    (resnet_detect/tools/X.py), not the repository's `python tools/X.py`."""
    return PROGRAM is not None or Path(sys.argv[0]).resolve().parent.parent.name == "resnet_detect"


def as_installed(text: str) -> str:
    """A message's `tools/X.py` commands as a pip install runs them (`python -m resnet_detect
    X`, or `resnet-detect X` where the tool runs so; `torchrun ... -m resnet_detect X`) where
    the tool `runs_as_installed`; unchanged for `python tools/X.py`."""
    if not runs_as_installed():
        return text
    launcher = PROGRAM.rsplit(" ", 1)[0] if PROGRAM else "python -m resnet_detect"
    text = re.sub(r"(torchrun [^;()]*?)tools/(\w+)\.py", r"\1-m resnet_detect \2", text)
    return re.sub(r"(?<![\w/.])(?:python3? )?tools/(\w+)\.py", launcher + r" \1", text)


def _say(line: str) -> None:
    """`line` on stderr in one write: under torchrun every process says its error, and
    print's two writes (the text, then the newline) ran two processes' lines into one."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_tool(main: Callable[[Sequence[str]], Any]) -> None:
    """A tool's command line: `main(sys.argv[1:])`, where an error in what the user gave (a
    config key, a data file, a checkpoint, an export, an output folder in use) prints as its
    message, as argparse's usage errors do, instead of a traceback, and exits with 2. A
    SIGTERM stops it as Ctrl-C does, with 143 (a training catches it itself, to save a
    checkpoint); under torchrun, whose SIGTERM must end a process waiting in a collective,
    it keeps its default."""
    escape_what_the_console_lacks(sys.stdout, sys.stderr)
    warnings.showwarning = log_warning
    record_factory = logging.getLogRecordFactory()
    if runs_as_installed():  # (its log lines name the tools so too)
        logging.setLogRecordFactory(_as_installed_records(record_factory))
    catch = (environment_world_size() == 1
             and threading.current_thread() is threading.main_thread())
    previous, catching = signal.getsignal(signal.SIGTERM), CATCHING.value
    if catch:
        signal.signal(signal.SIGTERM, _raise_terminated)
        # loader workers leave it to this process (`kill -- -PGID`, Slurm's scancel), which
        # ends them as it stops; they died of it, with a traceback at exit
        CATCHING.value = 1
    says_its_error = SAYS_ITS_ERROR.set(_repeats_the_message)
    opencv_log = silence_opencv_log()
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt as e:  # Ctrl-C: what was done is written already; no traceback
        terminated = isinstance(e, Terminated)
        print(f"\n{program_name()}: {'terminated' if terminated else 'interrupted'}",
              file=sys.stderr)
        raise SystemExit(143 if terminated else 130) from None
    except BrokenPipeError:  # `| head` closed stdout: stop quietly, as coreutils do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        raise SystemExit(141) from None
    except Exception as e:
        said = _error_line(e)
        if said is None:
            raise
        _say(f"{program_name()}: error: {said[0]}")
        raise SystemExit(said[1]) from None
    finally:
        SAYS_ITS_ERROR.reset(says_its_error)
        cv2.utils.logging.setLogLevel(opencv_log)
        logging.setLogRecordFactory(record_factory)
        if catch:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            CATCHING.value = catching


def _error_line(e: Exception) -> tuple[str, int] | None:
    """What `run_tool` says of an error instead of its traceback, and its exit status; None
    where the traceback is what to show."""
    if isinstance(e, USER_ERRORS):
        return as_installed(worker_error_message(e)), 2
    # ours ("ONNX Runtime ran out of memory on a WxH image ..." and test.max_size) or NumPy's
    # ("Unable to allocate 1.2 GiB for an array with shape ..."); Python's own says nothing
    if isinstance(e, MemoryError) and str(e):
        return str(e), 2
    if not isinstance(e, (OSError, RuntimeError)):
        return None
    # a path that links to itself: pathlib's RuntimeError (Python 3.11, 3.12) or ELOOP
    if getattr(e, "errno", None) == errno.ELOOP or str(e).startswith("Symlink loop from"):
        return f"{e}: a path given links back to itself", 2
    gone = other_process_gone(e)  # a collective's, under torchrun: another process stopped
    return None if gone is None else (gone, 1)


def _repeats_the_message(e: BaseException) -> bool:
    """Whether `run_tool`'s error line says what `e` says (not so where another process
    stopped: the line names it, and the log line where its warnings are)."""
    return (isinstance(e, Exception) and _error_line(e) is not None
            and other_process_gone(e) is None)


def _as_installed_records(factory: Callable[..., logging.LogRecord]
                          ) -> Callable[..., logging.LogRecord]:
    """`factory` whose records of this package name the tools as `as_installed` does (a log
    line's advice of `tools/eval.py` under `python -m resnet_detect`)."""
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if record.name.startswith("resnet_detect"):
            try:
                message = record.getMessage()
            except Exception:  # (arguments that do not fit: logging's handler says so)
                return record
            if "tools/" in message:
                record.msg, record.args = as_installed(message), None
        return record
    return make


CHECKPOINT_SUFFIXES = {".pth", ".pt", ".pkl", ".onnx", ".safetensors", ".ckpt", ".bin"}


class ToolArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose "unrecognized arguments" error names what detectron2's,
    mmdetection's and torchvision's references' flags are here (--config-file, --num-gpus,
    --cfg-options, --work-dir...)."""

    def __init__(self, *args: Any, training: bool = False, **kwargs: Any) -> None:
        # no abbreviations: mmdetection's --out (a results file) was taken as --output
        kwargs.setdefault("prog", program_name())
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.training = training

    def format_help(self) -> str:  # the options' help names tools/X.py too
        return as_installed(super().format_help())

    def parse_intermixed_args(self, args: Sequence[str] | None = None,
                              namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """As argparse's, naming unknown options first (a missing --output was said before
        the --out that meant it, a missing --weights before the --weigh typed for it)."""
        if isinstance(args, str):  # main("c.yaml") read its letters as the words
            raise TypeError(f"the arguments are a list of words, e.g. {args.split()!r}, got "
                            f"the string {args!r}")
        words = list(sys.argv[1:] if args is None else args)
        self._words = words
        unknown = [w for w in words if w.startswith("--") and w != "--"
                   and w.split("=", 1)[0] not in self._option_string_actions]
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        self._refuse_a_path_after_resume(words)
        return super().parse_intermixed_args(args, namespace)

    def _refuse_a_path_after_resume(self, words: Sequence[str]) -> None:
        """`--resume CKPT` (torchvision's references' and mmdetection's spelling) made CKPT an
        override, refused as "must look like key=value"."""
        if "--resume-from" not in self._option_string_actions:
            return
        for before, word in zip(words, words[1:]):
            if (before == "--resume" and "=" not in word and not word.startswith("-")
                    and Path(word).suffix.lower() in CHECKPOINT_SUFFIXES):
                self.error(f"--resume takes no checkpoint here: it continues the last one of "
                           f"train.output_dir; to continue from {word}: --resume-from {word}")

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            words = message[len(prefix):].split()
            hints = flag_hints(words, self.training, self.prog, self._task_of_the_config())
            hinted = {hint.split(":", 1)[0] for hint in hints}
            for word in words:  # a typo of one of ours (abbreviations are not taken)
                flag = word.split("=", 1)[0]
                close = difflib.get_close_matches(flag, [o for o in self._option_string_actions
                                                         if o.startswith("--")], n=1)
                if flag.startswith("--") and flag not in hinted and close:
                    hints.append(f"{flag}: did you mean {close[0]}?")
            tool = Path(sys.argv[0]).name
            message += "".join(f"\n  {as_installed(hint.replace('TOOL.py', tool))}"
                               for hint in hints)
        if message.endswith("required: config, overrides"):  # (overrides may be none)
            message = message.replace("config, overrides", "config")
        if "required" in message and "--weights" in self._option_string_actions:
            message += "".join(f"\n  {word}: a checkpoint is given as --weights {path}"
                               for word, path in self._checkpoints_given())
        super().error(message)

    def _task_of_the_config(self) -> str:
        """The task of the config among the words (the first YAML file), for the hints of
        the flags; "" where none is readable."""
        for word in getattr(self, "_words", []):
            if Path(word).suffix.lower() in (".yaml", ".yml") and (
                    Path(word).is_file() or word.startswith(PACKAGE_PREFIX)):
                try:
                    return config_task(word)
                except (ValueError, OSError):  # (ConfigError is a ValueError)
                    return ""
        return ""

    def _checkpoints_given(self) -> list[tuple[str, str]]:
        """(word, path) of the positional words that name a checkpoint: mmdetection's and
        mmsegmentation's `test.py CONFIG CHECKPOINT`, or a `model.weights=CKPT` override."""
        words = getattr(self, "_words", [])
        found = []
        for i, word in enumerate(words):
            previous = words[i - 1] if i else ""
            takes_value = (previous.startswith("--") and "=" not in previous
                           and getattr(self._option_string_actions.get(previous), "nargs",
                                       None) != 0)
            path = word.split("=", 1)[-1]
            if (not word.startswith("-") and not takes_value
                    and Path(path).suffix.lower() in CHECKPOINT_SUFFIXES):
                found.append((word, path))
        return found


def config_argument_parser(description: str | None, *,
                           resume: bool = False) -> argparse.ArgumentParser:
    """A parser with the positional CONFIG and `key=value` overrides (and `--resume` for the
    training tools); tools add their options and call `parse_intermixed_args`, so options may
    come before or after the overrides."""
    parser = ToolArgumentParser(description=description, training=resume,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (may inherit with _base_)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue from OUTPUT_DIR/last_checkpoint if there is one")
        parser.add_argument("--resume-from", metavar="CKPT", default=None,
                            help="continue from this checkpoint (e.g. OUTPUT_DIR/model_N.pth "
                                 "from before a divergence); later ones of OUTPUT_DIR are "
                                 "replaced")
        parser.add_argument("--print-config", action="store_true",
                            help="print the config as the run would read it (defaults, _base_ "
                                 "files, CONFIG, overrides) and exit without training; keys "
                                 "the data fills (model.num_classes) stay null, and "
                                 "mandatory ones not given yet (data.root) are ???")
    return parser


def _stop_the_others(error: Exception, overrides: Sequence[str]) -> None:
    """Under torchrun, a process whose config cannot be read (a file missing on its node, an
    override typed on one node only) joins the others before it stops, so that they stop too,
    naming it, instead of waiting 30 minutes for it to join. Its device is the override's,
    else auto (the others' backend, unless their config says cpu on a GPU machine)."""
    if environment_world_size() == 1:
        return
    device = next((o.split("=", 1)[1] for o in reversed(overrides)
                   if o.startswith("train.device=")), "auto")
    try:
        init_distributed(device if device in ("auto", "cpu", "cuda") else "auto")
        done_everywhere(lambda: _raise(error), "read its config")
    except Exception:  # its own error is the one to report
        pass
    finally:
        cleanup()


def _raise(error: Exception) -> None:
    raise error


def _check_resume_from(path: str | None) -> None:
    if path is None:
        return
    if not Path(path).is_file():
        raise UnreadableCheckpointError(f"--resume-from: checkpoint not found: "
                                        f"{missing_path(path)}")
    # what torch.save writes is a zip archive, its directory at the end: a cheap look that
    # names a truncated or foreign file before the data is read (minutes at COCO scale)
    if not zipfile.is_zipfile(path):
        raise UnreadableCheckpointError(f"--resume-from: {path} is not a checkpoint (not the "
                                        f"zip archive torch.save writes: truncated, or "
                                        f"another kind of file)")
    read_training_checkpoint(path)  # weights alone, another program's: said now too


def _refuse_a_run_config_resumed_elsewhere(config: Path, output_dir: Any) -> None:
    """`tools/train.py RUN/config.yaml --resume` from another folder than the run was
    started from (a scheduler's requeue, a moved folder): the recorded train.output_dir is
    relative to that one, so the run started anew elsewhere with a warning; refused, naming
    the override that continues it."""
    run = config.resolve().parent
    if not ((run / "last_checkpoint").is_file() and isinstance(output_dir, str)):
        return
    here = Path(output_dir).resolve()
    if here != run and not (here / "last_checkpoint").is_file():
        where = ("" if Path(output_dir).is_absolute() else
                 f" is relative to the folder that run was started from; from here it is "
                 f"{here}, which")
        moved = " (the run was moved?)" if not where else ""
        raise ConfigError(f"--resume: {config} is the config of the run in {run}, whose "
                          f"train.output_dir {output_dir}{where} holds no checkpoint{moved}: "
                          f"add train.output_dir={run} to continue that run")


def _print_config(task: Any, cfg: Any) -> None:
    """--print-config: the checks the run makes before reading data (as it would refuse the
    config), then the config; mandatory keys not given yet (???) and weights files not there
    yet (a quickstart's, before `make demo`) are named on stderr, not refused: printing a
    config needs none of the files it names."""
    probe, absent = copy.deepcopy(cfg), []
    # a mandatory key not given yet (???) is checked at its default (the task's base config)
    defaults = (task_defaults(task.name) if getattr(task, "name", None) in TASK_MODULES
                else None)
    for key in OmegaConf.missing_keys(cfg):
        default = (None if defaults is None else
                   OmegaConf.select(defaults, key, default=None, throw_on_missing=False))
        OmegaConf.update(probe, key, default, force_add=True)
    _, amp = check_training_config(task, probe)
    config_hooks(probe)  # (built as the run would)
    amp_for_device(amp, training_device_type(probe.train.device), warn=False)
    for key, value in weights_keys(probe.get("model")).items():
        if isinstance(value, str) and value and not os.path.exists(value):
            absent.append(f"{key}: {value}")
            OmegaConf.update(probe, key, None)
    if hasattr(task, "check_config"):
        task.check_config(probe)
    if os.environ.get("RANK", "0") != "0":  # (under torchrun: once)
        return
    print(OmegaConf.to_yaml(cfg, resolve=True), end="", flush=True)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        print(f"{', '.join(missing)}: ??? is a value to give before the run (in the file or "
              f"as key=value)", file=sys.stderr, flush=True)
    for line in absent:
        print(f"{line} is not there (yet): the run needs it", file=sys.stderr, flush=True)


def train_main(description: str | None, argv: Sequence[str] | None, *,
               task: str | None = None) -> dict[str, Any]:
    """What tools/train.py and tools/pretrain.py do: parse CONFIG, overrides and --resume,
    pick the task from the config's `task` key, run it, print its summary line.

    Args:
        description: the tool's help text.
        argv: command-line arguments (None: sys.argv).
        task: the only task this tool accepts (None: any).

    Returns:
        `engine.runner.run_training`'s result plus "task".
    """
    args = config_argument_parser(description, resume=True).parse_intermixed_args(argv)
    try:
        name, cfg = load_task_config(args.config, args.overrides, task=task,
                                     allow_missing=args.print_config)
        runner_task = task_module(name).TASK()
        cache_memory = parse_bool(cfg.train.cache_host_memory, "train.cache_host_memory")
    except Exception as e:
        _stop_the_others(e, args.overrides)
        raise
    if args.print_config:
        _print_config(runner_task, cfg)
        return {"task": name, "config": cfg}
    if args.resume and not any(o.strip().startswith("train.output_dir=")
                               for o in args.overrides):  # (a new folder given: a new run)
        _refuse_a_run_config_resumed_elsewhere(Path(args.config), cfg.train.output_dir)
    device = init_distributed(cfg.train.device, collective_timeout_s(cfg))
    if cache_memory and device.type == "cpu" and not cache_host_memory():
        warnings.warn("train.cache_host_memory needs glibc's malloc (Linux); ignored here",
                      stacklevel=2)
    try:
        done_everywhere(lambda: None, "read its config")  # as _stop_the_others does
        # before the data is read (minutes at COCO scale), not at the resume after it; on
        # every node (a path on one node's disk only)
        done_everywhere(lambda: _check_resume_from(args.resume_from),
                        "find its --resume-from checkpoint")
        # (a restart continues this launch's progress, not its --resume-from checkpoint's)
        restarted = resume_after_restart(cfg.train.output_dir, program_name(),
                                         bool(args.resume_from or args.resume))
        resume = True if restarted else args.resume_from or args.resume
        try:
            result = run_training(runner_task, cfg, device, resume=resume)
        except TrainingInterrupted as stopped:
            if is_main_process():
                try:
                    print(stopped, file=sys.stderr, flush=True)
                except OSError:  # a console gone: log.txt says it
                    pass
            raise SystemExit(stopped.exit_code) from None
        if is_main_process():  # (run_training closed its log.txt: reopened for the line)
            with logging_kept():
                setup_logging(cfg.train.output_dir)
                print_and_log(runner_task.summary(result["all_metrics"]))
        barrier()  # the processes leave together, once the main one has written its files
        return {**result, "task": name}
    finally:
        cleanup()
