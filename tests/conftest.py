"""Suite-wide settings: one intra-op thread keeps timings predictable on small shared machines;
the log handlers a test's in-process run adds (setup_logging) leave with the test."""
import logging
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
