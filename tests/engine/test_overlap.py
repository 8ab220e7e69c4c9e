"""A val split that reads the training data is warned of before the data is read."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from resnet_detect.engine.data.overlap import warn_of_val_in_training

SAID = "data.val reads the training data"


def _warnings(caplog: pytest.LogCaptureFixture, data: dict) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_of_val_in_training(data)
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_a_val_split_of_the_training_files_is_warned_of(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    coco = {"ann_file": str(tmp_path / "train.json"), "img_dir": str(tmp_path / "images")}
    said = _warnings(caplog, {"train": coco, "val": {**coco, "img_dir": f"{tmp_path}/./images"}})
    assert said.startswith(f"{SAID} (data.train's ann_file, img_dir): its scores are of images "
                           f"the model was trained on")
    assert _warnings(caplog, {"train": coco, "val": {**coco, "ann_file": "val.json"}}) == ""
    # segmentation folders: the same folders without split files; VOC's layout with the val
    # split file alone (the training split reads every image, the val ones too)
    folders = {"img_dir": "JPEGImages", "mask_dir": "SegmentationClass", "ann_file": None,
               "split_file": None}
    assert _warnings(caplog, {"train": folders, "val": dict(folders)}).startswith(SAID)
    assert _warnings(caplog, {"train": {**folders, "img_suffix": ".jpg"},  # other files
                              "val": {**folders, "img_suffix": ".png"}}) == ""
    voc = _warnings(caplog, {"train": folders, "val": {**folders, "split_file": "val.txt"}})
    assert voc.startswith("data.train reads every image of JPEGImages, the images "
                          "data.val.split_file (val.txt) picks among them")
    assert _warnings(caplog, {"train": {**folders, "split_file": "train.txt"},
                              "val": {**folders, "split_file": "val.txt"}}) == ""
    assert _warnings(caplog, {"train": {**folders, "split_file": "train.txt"},
                              "val": folders}).startswith(
        "data.val reads every image of JPEGImages, the images data.train.split_file "
        "(train.txt) picks among them")
    assert _warnings(caplog, {"train": folders, "val": None}) == ""  # no val split
    assert _warnings(caplog, {"root": "imagenet"}) == ""  # pretraining's folders
