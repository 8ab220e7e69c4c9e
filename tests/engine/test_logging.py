"""engine.logging's scalars.jsonl: JSON that any reader parses."""
import json
import math
from pathlib import Path

from resnet_detect.engine.logging import ScalarWriter


def test_scalars_jsonl_writes_undefined_values_as_null(tmp_path: Path) -> None:
    """An AP of a size without objects is NaN; JSON has no NaN (JSON.parse refused the line)."""
    writer = ScalarWriter(None, tmp_path / "scalars.jsonl")
    writer.add_scalars({"bbox/AP": 12.5, "bbox/APl": math.nan, "x": math.inf}, 10)
    line = (tmp_path / "scalars.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"iteration": 10, "bbox/AP": 12.5, "bbox/APl": None, "x": None}
