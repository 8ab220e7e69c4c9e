"""benchmarks/coco_scale.py at toy sizes: its data loads, and both COCO backends give one AP."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import coco_scale  # noqa: E402


@pytest.mark.slow
def test_coco_scale_benchmark_runs_every_phase(tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    coco_scale.main(["--data", str(tmp_path), "--train-images", "40", "--val-images", "12"])
    out = capfd.readouterr().out
    assert "train2017: 40 images" in out and "val2017: 12 images" in out
    rows = dict(re.findall(r"^\| (\w+) \| [\d.]+ \| \d+ \| (.*) \|$", out, re.M))
    assert rows["load_boxes"] == rows["load_masks"] == "40 records"
    ap = {phase: re.fullmatch(r"1200 detections, AP ([\d.]+)", rows[phase]).group(1)
          for phase in ("eval_pycocotools", "eval_faster")}
    assert ap["eval_pycocotools"] == ap["eval_faster"] and float(ap["eval_faster"]) > 0
