"""engine.data.loaders' CountedLoader: what an evaluation says of its progress."""
import logging
import time

import pytest

from resnet_detect.engine.data import loaders


def test_an_evaluation_logs_its_progress_and_time_per_image(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A COCO val split took hours on a CPU without a line until its scores: progress with
    an ETA now, and the time per image at the end (detectron2's inference_on_dataset)."""
    monkeypatch.setattr(loaders, "PROGRESS_SECONDS", 0.0)  # a line after every batch
    counted = loaders.CountedLoader(loaders.build_test_loader(list(range(5)), batch_size=2))
    with caplog.at_level(logging.INFO, logger=loaders.__name__):
        for _ in counted:
            time.sleep(0.1)  # the model's work on the batch
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [
        "inference: 2/5 images", "inference: 4/5 images", "inference: 5/5 images",
        "inference: 5 images in 0:00:00"]
    per_image = float(lines[-1].split(", ")[1].split(" s/image")[0])
    assert 0.3 / 5 <= per_image < 1.0  # three batches of 0.1 s over 5 images
    assert lines[0].endswith("eta 0:00:00")
    monkeypatch.setattr(loaders, "PROGRESS_SECONDS", 3600.0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=loaders.__name__):
        assert sum(len(b) for b in counted) == 5
    assert len(caplog.records) == 1  # the final line only


def test_under_several_processes_the_count_is_said_to_be_this_processs_share(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """7 val images over 2 processes: "4 images ..., in each of 2 processes" read as 8."""
    monkeypatch.setattr(loaders, "get_world_size", lambda: 2)
    counted = loaders.CountedLoader(loaders.build_test_loader(list(range(4)), batch_size=2))
    with caplog.at_level(logging.INFO, logger=loaders.__name__):
        assert sum(len(b) for b in counted) == 4
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "inference: 4 images (this process's share) in 0:00:00"]
