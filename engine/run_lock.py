"""One training run per output folder: an advisory lock (flock) on OUTPUT_DIR/.run.lock, held
by the main process while a run writes there. The kernel drops it when that process ends, a
kill -9 included, so no stale lock is ever left to clear. (Where flock does not exist, as on
Windows, runs are not locked.)"""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .distributed import is_main_process

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".run.lock"


class FolderInUseError(RuntimeError):
    """Another live training run writes to the output folder."""


@contextlib.contextmanager
def exclusive_output_dir(folder: str | os.PathLike) -> Iterator[None]:
    """Within the context this process alone trains into `folder` (main process only).

    Raises:
        FolderInUseError: another run holds it (named by its pid and host); nothing written.
    """
    folder = Path(folder)
    if fcntl is None or not is_main_process():
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+")
    except OSError:  # a file in the way, no permission: setup_logging names the problem
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderInUseError(
                f"{folder} is in use by another training run ({holder}): two runs would mix "
                f"their checkpoints and logs; wait for it or stop it, or set train.output_dir "
                f"to another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
