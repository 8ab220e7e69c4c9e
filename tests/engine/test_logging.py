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


def test_a_file_name_that_is_no_utf8_is_logged_escaped(tmp_path: Path) -> None:
    """b"caf\\xe9.png" (a Windows zip unpacked here) made log.txt's handler fail: a "Logging
    error" traceback, and the line (a run's reason to stop) missing from log.txt. (The
    tools' console escapes it: cli.run_tool.) The record goes to log.txt's handler alone:
    pytest's own capture cannot carry the name between its processes."""
    import logging
    import os
    name = os.fsdecode(b"caf\xe9.png")
    setup_logging(tmp_path / "run")
    try:
        (handler,) = [h for h in logging.getLogger().handlers
                      if isinstance(h, logging.FileHandler) and h.baseFilename.startswith(
                          str(tmp_path))]
        handler.handle(logging.LogRecord("test", logging.WARNING, __file__, 1,
                                         "skipping unreadable image: %s", (name,), None))
    finally:
        setup_logging(None)
    assert "skipping unreadable image: caf\\udce9.png" in (tmp_path / "run/log.txt").read_text()


def test_scalars_go_on_to_tensorboard_when_the_jsonl_cannot_be_written(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder in scalars.jsonl's place (or a full disk) stopped the run; then it stopped
    tensorboard's scalars too."""
    (tmp_path / "scalars.jsonl").mkdir()
    writer = ScalarWriter(tmp_path / "tb", tmp_path / "scalars.jsonl")
    for step in (1, 2):
        writer.add_scalars({"loss": 1.0 / step}, step)
    writer.close()
    assert caplog.text.count("cannot write the scalars of iteration 1 to "
                             f"{tmp_path / 'scalars.jsonl'} (IsADirectoryError") == 1
    assert "iteration 2" not in caplog.text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]


def test_an_evaluation_run_again_replaces_its_scalars(tmp_path: Path) -> None:
    """A resumed run that evaluates again at its start iteration (a finished run resumed):
    that evaluation once in scalars.jsonl and in tensorboard, the progress line there kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    writer = ScalarWriter(tmp_path / "tb", tmp_path / "scalars.jsonl")
    writer.add_scalars({"train/loss": 2.0}, 5)
    writer.add_scalars({"train/loss": 1.0}, 10)
    writer.add_scalars({"bbox/AP": 5.0}, 10)
    writer.close()
    writer = ScalarWriter(tmp_path / "tb", tmp_path / "scalars.jsonl", start_iter=10,
                          evaluated_again=True)
    writer.add_scalars({"bbox/AP": 6.0}, 10)
    writer.close()
    assert [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()
            ] == [{"iteration": 5, "train/loss": 2.0}, {"iteration": 10, "train/loss": 1.0},
                  {"iteration": 10, "bbox/AP": 6.0}]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("bbox/AP")] == [(10, 6.0)]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(5, 2.0), (10, 1.0)]


def test_each_class_s_ap_and_iou_are_logged_as_scalars(tmp_path: Path) -> None:
    """detectron2 logs "bbox/AP-person": per-class AP (and a segmenter's per-class IoU) went
    to log.txt's tables only; not to the progress line, and not where undefined."""
    import logging

    from resnet_detect.engine.runner import _log_metrics
    writer = ScalarWriter(None, tmp_path / "scalars.jsonl")
    metrics = {"bbox": {"AP": 40.0, "per_category": {"person": 50.0, "hair drier": math.nan,
                                                     "dog": 30.0}},
               "sem_seg": {"mIoU": 60.0, "per_class_iou": {"road": 90.0, "sky": None}}}
    writer.add_scalars(_log_metrics(logging.getLogger("test_per_class"), metrics, 100), 100)
    lines = (tmp_path / "scalars.jsonl").read_text().splitlines()
    assert len(lines) == 1  # one line per evaluation: its record
    logged = json.loads(lines[0])
    assert logged == {"iteration": 100, "bbox/AP": 40.0, "bbox/AP-person": 50.0,
                      "bbox/AP-dog": 30.0, "sem_seg/mIoU": 60.0, "sem_seg/IoU-road": 90.0}
