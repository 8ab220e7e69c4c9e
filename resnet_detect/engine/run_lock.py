"""One training run per output folder: an advisory lock (flock) on OUTPUT_DIR/.run.lock, held
by the main process while a run writes there. Forked children (loader workers) close their copy
at once, so the kernel drops the lock with the main process, a kill -9 included, and no stale
lock is ever left to clear. Where flock is missing or unsupported (Windows, some network file
systems) runs are not locked, with a warning."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .distributed import any_process, is_main_process

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)
LOCK_FILE = ".run.lock"
_HELD: list[IO[str]] = []  # this process's locks, closed in every forked child


def _close_in_child() -> None:
    for handle in _HELD:
        handle.close()  # the child's copy only: the parent keeps its lock
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class FolderInUseError(RuntimeError):
    """Another live training run writes to the output folder."""


def _lock(folder: Path) -> tuple[IO[str] | None, str | None]:
    """(the held lock file or None, why the folder is refused or None)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    except OSError:  # a file in the way, no permission: setup_logging names the problem
        return None, None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            return None, (f"{folder} is in use by another training run ({holder}): two runs "
                          f"would mix their checkpoints and logs; wait for it or stop it, or set "
                          f"train.output_dir to another folder")
        handle.close()
        logger.warning("cannot lock %s (%s): this run does not keep others out of it", folder,
                       e.strerror or e)
        return None, None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle, None


@contextlib.contextmanager
def exclusive_output_dir(folder: str | os.PathLike) -> Iterator[None]:
    """Within the context this run alone trains into `folder`. Called on every process: the
    main one locks, and all stop together when it cannot.

    Raises:
        FolderInUseError: another run holds it (named by its pid and host); nothing written.
    """
    if fcntl is None and is_main_process():
        logger.warning("no flock on this platform: this run does not keep others out of %s",
                       folder)
    handle, refused = (_lock(Path(folder)) if fcntl is not None and is_main_process()
                       else (None, None))
    if any_process(refused is not None):
        raise FolderInUseError(refused or f"{folder} is in use by another training run (the "
                                          f"main process found it locked)")
    if handle is not None:
        _HELD.append(handle)
    try:
        yield
    finally:
        if handle is not None:
            _HELD.remove(handle)
            handle.close()
