"""Suite-wide settings: one intra-op thread keeps timings predictable on small shared machines;
the log handlers a test's in-process run adds (setup_logging) leave with the test; temporary
files go with the session."""
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _drop_log_handlers() -> Iterator[None]:
    """A run's log.txt handler left on the root logger outlived its tmp folder: a later test's
    spawned loader worker, which reopens the handlers it is handed, failed on the missing
    file."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_engine_handler", False):
            root.removeHandler(handler)
            handler.close()


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_in_one_folder() -> Iterator[None]:
    """The temporary folders of the tests' processes (torchrun's log folders, the folders of
    multiprocessing in a process a test kills) were left in /tmp, dozens per `make test`: they
    go now with one folder of the session's (short: Unix socket paths inside it have a limit
    of 104-108 characters)."""
    folder = tempfile.mkdtemp(prefix="resnet_detect_tests_")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = folder
    tempfile.tempdir = None  # (tempfile reads TMPDIR once, then keeps it)
    yield
    if before is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = before
    tempfile.tempdir = None
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def hangup_not_ignored() -> Iterator[None]:
    """A test of what SIGHUP does, in a suite run under `nohup` (SIGHUP ignored from the
    start, which the runs leave ignored: they went on and the tests failed): the default
    disposition while it runs."""
    import signal
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None or signal.getsignal(hangup) is not signal.SIG_IGN:
        yield
        return
    signal.signal(hangup, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(hangup, signal.SIG_IGN)
