"""LVIS's federated AP: lvis-api's rules on top of COCOeval.

An LVIS image is checked for some categories only: those annotated in it (positive), those
verified absent (`neg_category_ids`), and, among the positives, some not annotated in full
(`not_exhaustive_category_ids`). lvis-api (LVISResults, LVISEval) scores
- at most 300 detections per image, the highest scores, taken before anything else;
- a detection only in an image checked for its category; the others are dropped;
- an unmatched detection of a category not annotated in full as ignored, not as a false
  positive;
- the AP of the rare, common and frequent categories (each category's `frequency`: r, c, f)
  besides COCO's numbers, every (image, category) pair with all its detections;
- objects and detections of area 0 not at all, and no object as a crowd region.
A file is scored so when every image has both lists, as LVIS's files have them.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from resnet_detect.engine.data.coco import IMAGE_LISTS, DatasetError, is_federated

LVIS_MAX_DETS = 300  # detections scored per image, all categories together
FREQUENCY_GROUPS = (("APr", "r"), ("APc", "c"), ("APf", "f"))


def partly_listed(dataset: Mapping[str, Any]) -> tuple[int, str]:
    """(how many images have both of LVIS's lists, an image lacking one as "image id N
    lacks KEY") of a file where some images have a list but not all have both ((0, "")
    otherwise: a COCO file, or LVIS's)."""
    images = dataset["images"]
    if not any(key in img for img in images for key in IMAGE_LISTS):
        return 0, ""
    lacking = [(img, key) for img in images for key in IMAGE_LISTS if key not in img]
    if not lacking:
        return 0, ""
    both = sum(all(key in img for key in IMAGE_LISTS) for img in images)
    img, key = lacking[0]
    return both, f"image id {img['id']} lacks {key}"


def check_lvis_file(dataset: Mapping[str, Any], ann_file: Path, *, warn: bool = True) -> None:
    """An LVIS file's categories' frequencies and images' lists, where lvis-api would fail
    (a missing frequency, a list of other than ids: refused, naming the entry; a missing or
    unknown frequency had moved a category out of APr/APc/APf without a word); ids the lists
    name that are no category of the file, and categories listed absent from an image that
    has objects of them, are warned of (lvis-api takes both as they are; `warn`: False where
    an evaluation's first scoring said it). A file that is not LVIS's: nothing."""
    if not is_federated(dataset):
        return
    for category in dataset["categories"]:
        if category.get("frequency") not in ("r", "c", "f"):
            raise DatasetError(
                f"{ann_file}: category id {category['id']} ({category.get('name')!r}): "
                f"frequency must be 'r', 'c' or 'f' (rare, common, frequent: APr, APc and "
                f"APf group the categories by it), got {category.get('frequency')!r}")
    known = {c["id"] for c in dataset["categories"]}
    annotated: dict[int, set[int]] = {}
    for ann in dataset["annotations"]:
        annotated.setdefault(ann["image_id"], set()).add(ann["category_id"])
    unknown, absent_yet_annotated = [], []
    for img in dataset["images"]:
        negative = listed_category_ids(img, IMAGE_LISTS[0], ann_file)
        listed = [*negative, *listed_category_ids(img, IMAGE_LISTS[1], ann_file)]
        unknown += [(img["id"], i) for i in listed if i not in known]
        absent_yet_annotated += [(img["id"], i) for i in negative
                                 if i in annotated.get(img["id"], ())]
    if unknown and warn:
        warnings.warn(f"{ann_file}: {len(unknown)} ids in the images' "
                      f"{' / '.join(IMAGE_LISTS)} are no category of the file (image id "
                      f"{unknown[0][0]}: {unknown[0][1]}); they change no score",
                      RuntimeWarning, stacklevel=2)
    if absent_yet_annotated and warn:
        image_id, category = absent_yet_annotated[0]
        warnings.warn(f"{ann_file}: {len(absent_yet_annotated)} times an image lists a "
                      f"category as absent ({IMAGE_LISTS[0]}) that it has objects of (image id "
                      f"{image_id}: category {category}); scored as annotated, as lvis-api "
                      f"does", RuntimeWarning, stacklevel=2)


def listed_category_ids(img: Mapping[str, Any], key: str, ann_file: Path) -> list[int]:
    """An image's `key` list (one of IMAGE_LISTS; [] without it), checked to be category
    ids."""
    ids = img.get(key, [])
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                            for i in ids):
        raise DatasetError(f"{ann_file}: image id {img['id']}: {key} must be a list of "
                           f"category ids, got {ids!r:.80}")
    return ids


@dataclass(frozen=True)
class Federation:
    """Per image id: the categories it was checked for, and those not annotated in full."""

    checked: dict[int, set[int]]
    not_exhaustive: dict[int, set[int]]

    @classmethod
    def of(cls, dataset: Mapping[str, Any], ann_file: Path) -> Federation:
        checked = {img["id"]: set(listed_category_ids(img, IMAGE_LISTS[0], ann_file))
                   for img in dataset["images"]}
        not_exhaustive = {img["id"]: set(listed_category_ids(img, IMAGE_LISTS[1], ann_file))
                          for img in dataset["images"]}
        for ann in dataset["annotations"]:
            checked.setdefault(ann["image_id"], set()).add(ann["category_id"])
        return cls(checked, not_exhaustive)

    def scored(self, results: Sequence[dict[str, Any]], iou_type: str,
               ) -> list[dict[str, Any]]:
        """The results lvis-api scores: the best 300 of each image (ties in the given order),
        then those of a category the image was checked for and of an area above 0 (the box's,
        or for "segm" the mask's)."""
        per_image: dict[int, list[dict[str, Any]]] = {}
        for result in results:
            per_image.setdefault(result["image_id"], []).append(result)
        kept = []
        for image_id, entries in per_image.items():
            best = sorted(entries, key=lambda r: r["score"], reverse=True)[:LVIS_MAX_DETS]
            checked = self.checked[image_id]
            kept += [r for r in best if r["category_id"] in checked and _area(r, iou_type) > 0]
        return kept

    def ignore_unmatched_not_exhaustive(self, eval_imgs: Sequence[dict[str, Any] | None]) -> None:
        """In pycocotools' per (image, category, area) results, before accumulate(): an
        unmatched detection of a category the image is not annotated in full for is ignored."""
        for entry in eval_imgs:
            if entry is not None and entry["category_id"] in self.not_exhaustive.get(
                    entry["image_id"], ()):
                entry["dtIgnore"] = np.logical_or(entry["dtIgnore"], entry["dtMatches"] == 0)


def _area(result: Mapping[str, Any], iou_type: str) -> float:
    if iou_type == "segm":
        return float(mask_utils.area(result["segmentation"]))
    _, _, w, h = result["bbox"]
    return float(w) * float(h)


def frequency_group_aps(precision: np.ndarray, cat_ids: Sequence[int],
                        frequencies: Mapping[int, Any]) -> dict[str, float]:
    """APr, APc, APf in percent (NaN where no category of the group has ground truth; the
    groups from each category id's `frequency`), from
    COCOeval's accumulated precision (IoU, recall, category, area, max dets): all areas, the
    last max dets, as LVISEval averages them."""
    aps = {}
    for name, frequency in FREQUENCY_GROUPS:
        group = [k for k, c in enumerate(cat_ids) if frequencies.get(c) == frequency]
        values = precision[:, :, group, 0, -1]
        values = values[values > -1]
        aps[name] = float(values.mean()) * 100 if values.size else float("nan")
    return aps
