"""engine.logging's scalars.jsonl: JSON that any reader parses."""
import json
import math
from pathlib import Path

import pytest

from resnet_detect.engine.files import UnwritableFolderError
from resnet_detect.engine.logging import ScalarWriter, setup_logging


def test_scalars_jsonl_writes_undefined_values_as_null(tmp_path: Path) -> None:
    """An AP of a size without objects is NaN; JSON has no NaN (JSON.parse refused the line)."""
    writer = ScalarWriter(None, tmp_path / "scalars.jsonl")
    writer.add_scalars({"bbox/AP": 12.5, "bbox/APl": math.nan, "x": math.inf}, 10)
    line = (tmp_path / "scalars.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"iteration": 10, "bbox/AP": 12.5, "bbox/APl": None, "x": None}


def test_an_output_folder_that_cannot_hold_the_log_is_named(tmp_path: Path) -> None:
    """A dangling link, or a log.txt that is a folder, gave a raw FileExistsError or
    IsADirectoryError."""
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(UnwritableFolderError, match=f"output folder {tmp_path}/link is a link "
                                                    f"to {tmp_path}/gone, which does not exist"):
        setup_logging(tmp_path / "link")
    (tmp_path / "run/log.txt").mkdir(parents=True)
    try:
        with pytest.raises(UnwritableFolderError, match=f"cannot write to the output folder "
                                                        f"{tmp_path}/run: Is a directory"):
            setup_logging(tmp_path / "run")
    finally:
        setup_logging(None)  # the console handler alone again
