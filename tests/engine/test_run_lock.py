"""The lock of a tool's --output folder (run_lock.exclusive_tool_folder): tools/export.py and
tools/eval.py refuse a folder another one writes at the same moment."""
from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from resnet_detect.engine import run_lock
from resnet_detect.engine.run_lock import FolderInUseError, exclusive_tool_folder


def test_a_second_tool_is_refused_and_the_folders_it_made_go(tmp_path: Path) -> None:
    """A folder made for the lock (its parents too) is removed where the tool fails and
    leaves it empty; one that was there, or that holds a file, stays."""
    with exclusive_tool_folder(tmp_path / "a/b", "tools/export.py") as locked:
        assert locked
        with pytest.raises(FolderInUseError, match=rf"^{tmp_path / 'a/b'} is in use: another "
                                                   rf"export or evaluation writes there now, "
                                                   rf"and tools/eval.py would mix"):
            with exclusive_tool_folder(tmp_path / "a/b", "tools/eval.py"):
                pass
    assert (tmp_path / "a/b").is_dir()  # (the first one ended well)
    with pytest.raises(ValueError), exclusive_tool_folder(tmp_path / "c/d", "tools/eval.py"):
        raise ValueError("the weights")
    assert not (tmp_path / "c").exists()  # (the nested parent made for it too: it was left)
    with pytest.raises(ValueError), exclusive_tool_folder(tmp_path / "a/b", "tools/eval.py"):
        raise ValueError("the weights")
    assert (tmp_path / "a/b").is_dir()
    with pytest.raises(ValueError), exclusive_tool_folder(tmp_path / "e", "tools/eval.py"):
        (tmp_path / "e/metrics.json").write_text("{}")
        raise ValueError("scoring")
    assert (tmp_path / "e/metrics.json").is_file()


def test_where_a_folder_cannot_be_locked_its_lock_file_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NFS emulates flock with fcntl's locks, whose exclusive lock needs a descriptor open for
    writing: a folder's failed with EBADF every time, and the tools ran unlocked (a second
    export then removed a running export's work folders as a killed one's leftovers)."""
    flock = run_lock.fcntl.flock

    def nfs_flock(target: object, operation: int) -> None:
        if isinstance(target, int):  # (a folder's descriptor)
            raise OSError(errno.EBADF, "Bad file descriptor")
        flock(target, operation)

    monkeypatch.setattr(run_lock.fcntl, "flock", nfs_flock)
    with exclusive_tool_folder(tmp_path / "out", "tools/export.py") as locked:
        assert locked and (tmp_path / "out" / run_lock.LOCK_FILE).is_file()
        with pytest.raises(FolderInUseError, match="is in use: another export or evaluation "
                                                   "writes there now, and tools/export.py"):
            with exclusive_tool_folder(tmp_path / "out", "tools/export.py"):
                pass


def test_without_flock_the_folder_is_said_to_be_unlocked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """(Windows): the tool runs, warned, and is told the folder is not locked, so that it
    takes nothing there for a killed tool's leftovers."""
    monkeypatch.setattr(run_lock, "fcntl", None)
    with caplog.at_level(logging.WARNING), \
            exclusive_tool_folder(tmp_path / "out", "tools/export.py") as locked:
        assert not locked
    assert f"no flock on this platform: tools/export.py does not keep other tools out of " \
           f"{tmp_path / 'out'}" in caplog.text
