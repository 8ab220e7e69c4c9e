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
_HELD_FOLDERS: list[int] = []  # (exclusive_tool_folder's: descriptors of locked folders)


def _close_in_child() -> None:
    for handle in _HELD:
        handle.close()  # the child's copy only: the parent keeps its lock
    _HELD.clear()
    for fd in _HELD_FOLDERS:
        os.close(fd)
    _HELD_FOLDERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class FolderInUseError(RuntimeError):
    """Another live training run (or tool) writes to the output folder."""


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


def _lock_folder_itself(folder: Path, tool: str) -> tuple[int | None, str | None]:
    """(the descriptor of `folder`, locked, or None; why the folder is refused or None)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # (not a folder: the tool's own checks name it)
        return None, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None, (f"{folder} is in use: another export or evaluation writes there "
                          f"now, and {tool} would mix its files with that one's; wait for it "
                          f"to end, or give another --output")
        # (a network file system's emulated flock of a read-only descriptor, say)
        logger.info("cannot lock %s (%s): another tool writing there at the same time is not "
                    "kept out", folder, e.strerror or e)
        return None, None
    return fd, None


@contextlib.contextmanager
def exclusive_tool_folder(folder: str | os.PathLike, tool: str) -> Iterator[None]:
    """Within the context no other tool that asks writes into `folder` (the --output of
    tools/export.py and tools/eval.py: two exports at once left one's graph under the other's
    metadata). An advisory flock on the folder itself, so that nothing is written into it (an
    export folder is shipped as it is); the kernel drops it with the process. The folder is
    made where missing, and removed again where the context fails and leaves it empty.
    Called on every process; the main one locks, and all stop together when it cannot.

    Raises:
        FolderInUseError: another tool holds the folder; nothing was written.
    """
    folder = Path(folder)
    made = is_main_process() and not folder.exists()
    fd, refused = None, None
    if is_main_process():
        folder.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            fd, refused = _lock_folder_itself(folder, tool)
    if any_process(refused is not None):
        if made:
            _remove_if_empty(folder)
        raise FolderInUseError(refused or f"{folder} is in use by another tool (the main "
                                          f"process found it locked)")
    if fd is not None:
        _HELD_FOLDERS.append(fd)
    try:
        yield
    except BaseException:
        if made:
            _remove_if_empty(folder)
        raise
    finally:
        if fd is not None:
            _HELD_FOLDERS.remove(fd)
            os.close(fd)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # (not empty: a file written there is kept)
        folder.rmdir()
