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
from typing import IO, Any

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


def _lock_folder_itself(folder: Path, tool: str) -> tuple[Any, str | None]:
    """(the held lock: the folder's descriptor, or where a file system cannot lock that, the
    open LOCK_FILE; None where nothing could be locked) and why the folder is refused, or
    None."""
    refusal = (f"{folder} is in use: another export or evaluation writes there now, and {tool} "
               f"would mix its files with that one's; wait for it to end, or give another "
               f"--output")
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # (not a folder: the tool's own checks name it)
        return None, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, None
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None, refusal
    # NFS emulates flock with fcntl's locks, whose exclusive lock needs a descriptor open for
    # writing (EBADF on a folder's): the training runs' lock file then, left in the folder
    handle, refused = _lock(folder)
    return handle, refusal if refused else None


@contextlib.contextmanager
def exclusive_tool_folder(folder: str | os.PathLike, tool: str) -> Iterator[bool]:
    """Within the context no other tool that asks writes into `folder` (the --output of
    tools/export.py and tools/eval.py: two exports at once left one's graph under the other's
    metadata). An advisory flock on the folder itself, so that nothing is written into it (an
    export folder is shipped as it is), or on LOCK_FILE in it where the file system cannot
    lock a folder (NFS); the kernel drops it with the process. Yields whether the folder is
    locked (False where flock is missing: nothing may then be taken for a killed tool's
    leftovers). The folders made for it are removed again where the context fails and leaves
    them empty. Called on every process; the main one locks, and all stop together when it
    cannot.

    Raises:
        FolderInUseError: another tool holds the folder; nothing was written.
    """
    folder = Path(folder)
    made: list[Path] = []  # (those this process made: another may make them at once)
    held, refused = None, None
    if is_main_process():
        for missing in reversed([folder, *folder.parents]):
            if not missing.exists():
                try:
                    missing.mkdir()
                    made.append(missing)
                except FileExistsError:
                    pass
        if fcntl is None:
            logger.warning("no flock on this platform: %s does not keep other tools out of %s",
                           tool, folder)
        else:
            held, refused = _lock_folder_itself(folder, tool)
    if any_process(refused is not None):
        _remove_if_empty(made)
        raise FolderInUseError(refused or f"{folder} is in use by another tool (the main "
                                          f"process found it locked)")
    if isinstance(held, int):
        _HELD_FOLDERS.append(held)
    elif held is not None:
        _HELD.append(held)
    try:
        yield held is not None
    except BaseException:
        _remove_if_empty(made)
        raise
    finally:
        if isinstance(held, int):
            _HELD_FOLDERS.remove(held)
            os.close(held)
        elif held is not None:
            _HELD.remove(held)
            held.close()


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):  # (the deepest first)
        with contextlib.suppress(OSError):  # (not empty: a file written there is kept)
            folder.rmdir()
