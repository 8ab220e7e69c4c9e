"""The val split read from the training data: its scores are of images trained on."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..distributed import is_main_process

logger = logging.getLogger(__name__)
# the keys that say which images (and annotations) a split reads
SOURCE_KEYS = ("ann_file", "img_dir", "mask_dir", "split_file")


def _resolved(value: Any) -> Any:
    return None if value in (None, "") else Path(str(value)).expanduser().resolve()


def warn_of_val_in_training(data: Mapping[str, Any]) -> None:
    """A warning where data.val reads what data.train reads (the same files and folders),
    or where one split reads a whole folder of which the other's split file picks some
    (VOC's layout with one of the two split files)."""
    train, val = data.get("train"), data.get("val")
    if not isinstance(train, Mapping) or not isinstance(val, Mapping) or not is_main_process():
        return
    if train.get("img_suffix") != val.get("img_suffix"):  # other files of the same folders
        return
    keys = [k for k in SOURCE_KEYS if k in train and k in val]
    given = {k: (_resolved(train[k]), _resolved(val[k])) for k in keys}
    if not any(t for t, _ in given.values()):
        return
    if all(t == v for t, v in given.values()):
        logger.warning("data.val reads the training data (data.train's %s): its scores are of "
                       "images the model was trained on; give the val split its own files",
                       ", ".join(k for k, (t, _) in given.items() if t))
        return
    split = given.get("split_file")
    folders = [k for k in ("img_dir", "mask_dir") if k in given and given[k][0]]
    if not (split and folders and all(given[k][0] == given[k][1] for k in folders)):
        return
    if split[0] is None and split[1] is not None:
        logger.warning("data.train reads every image of %s, the images data.val.split_file "
                       "(%s) picks among them: its scores are of images trained on; set "
                       "data.train.split_file (VOC: ImageSets/Segmentation/train.txt)",
                       train["img_dir"], val["split_file"])
    elif split[0] is not None and split[1] is None:
        logger.warning("data.val reads every image of %s, the images data.train.split_file "
                       "(%s) picks among them: its scores are partly of images trained on; set "
                       "data.val.split_file (VOC: ImageSets/Segmentation/val.txt)",
                       val["img_dir"], train["split_file"])
