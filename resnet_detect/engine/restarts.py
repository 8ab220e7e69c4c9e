"""torchrun's restarts (`--max-restarts=N`): the command it runs again after a process failed
continues from the checkpoints that launch wrote, as torchelastic asks of a training script,
instead of training from the start and replacing them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .checkpoint import pointer_target, replacement_pending
from .distributed import (all_gather_object, is_distributed, is_main_process,
                          torchrun_restart_count)


def launcher_start_time() -> float | None:
    """When this process's parent (torchrun's agent, which restarts it) started, in seconds
    since the epoch; None where /proc does not say (not Linux)."""
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text(
            encoding="utf-8", errors="replace")
        # after the command name (in parentheses, which may hold spaces), field 22 is the
        # start time in clock ticks after boot
        started = int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text(
            encoding="utf-8").splitlines() if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + started


def _written_since_launch(output_dir: Path) -> bool:
    """Whether the checkpoint `last_checkpoint` names was written since torchrun started (the
    start computed is at or before the true one: /proc/stat's boot time is in whole seconds).
    Not while a replacement of an earlier run is pending (a kill before or during this
    launch's first save: the resume puts that run back). Where /proc does not say (not
    Linux), any."""
    named = pointer_target(output_dir)
    if replacement_pending(output_dir) or not isinstance(named, Path):
        return False
    try:
        written = named.stat().st_mtime
    except OSError:
        return False
    started = launcher_start_time()
    return started is None or written >= started


def resume_after_restart(output_dir: str | os.PathLike, program: str,
                         resumes: bool = False) -> bool:
    """Whether the run continues from `output_dir`'s last checkpoint whatever its command
    says (`resumes`: it has --resume or --resume-from): on torchrun's restart of the command,
    when that checkpoint was written since torchrun started (an earlier run's is not this
    launch's progress: the command runs as it says). The main process decides (its folder
    holds the checkpoints) and says so; every process gets its answer."""
    count = torchrun_restart_count()
    decision = None
    if is_main_process() and count:
        decision = _written_since_launch(Path(output_dir))
        of = os.environ.get("TORCHELASTIC_MAX_RESTARTS")
        what = (f"continuing from the newest checkpoint of {output_dir}, as --resume does"
                if decision else f"{output_dir} holds no checkpoint of this launch: "
                                 f"{'resuming' if resumes else 'starting from scratch'}, as the "
                                 f"command says")
        print(f"{program}: torchrun restarted the processes (restart {count}"
              f"{f' of {of}' if of else ''}): {what}", file=sys.stderr, flush=True)
    if not is_distributed():
        return bool(decision)
    # (on every process, whatever its own count: the main process's decides)
    return bool(all_gather_object(decision)[0])
