"""Several COCO files, each with its image folder, as one file (what detectron2's several
DATASETS.TRAIN or mmdetection's ConcatDataset train on: VOC07+12, COCO with one's own images),
which every tool then reads with one `img_dir`.

Categories are matched by name: by default the first file's (ids kept), then the names only
later files have, with the next ids; `class_names` (and `category_ids`) fix them instead, as
the converters' --classes and --classes-from. Images and annotations get new ids (1..N in the
files' order); an image file that several files name is one image with all their objects
(annotations of the same photos split between files; an object an earlier file gives already,
the same box, mask and class to a thousandth of a pixel, once). File names become relative to
`img_dir`, by default the folder holding every image folder, through the paths as given
(symlinked folders and files are not followed). LVIS's per-image category lists follow the
names too, and the images' licenses the files' `licenses` (one entry of each name and url).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from resnet_detect.detection.federated import IMAGE_LISTS, listed_category_ids
from resnet_detect.engine.data import DatasetError, listing, read_coco_json
from resnet_detect.engine.data.coco import image_path, name_by_coco_url

from .conversion import absolute, ids_of_classes, raise_problems, warn_of_twin_spellings

logger = logging.getLogger(__name__)


def _category_lists(img: dict[str, Any], ann_file: Path, problems: list[str],
                    ) -> list[tuple[str, list[int]]]:
    """LVIS's per-image category lists the image has, each checked to be a list of ids."""
    lists = []
    for key in IMAGE_LISTS:
        if key in img:
            try:
                lists.append((key, listed_category_ids(img, key, ann_file)))
            except DatasetError as err:
                problems.append(str(err))
    return lists


class Merged(NamedTuple):
    coco: dict[str, Any]
    img_dir: Path
    repeated: int  # objects an earlier file gave already, left out
    shared: int  # images several files name


def merge_coco(inputs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
               img_dir: str | os.PathLike | None = None,
               class_names: Sequence[str] | None = None,
               category_ids: Sequence[int] | None = None) -> Merged:
    """Merge (COCO file, its image folder) pairs.

    Raises:
        DatasetError: every problem found (an image folder or image missing, a name given to
            two categories of one file, an image named with two sizes, a category outside
            `class_names`, a file outside `img_dir`), named; nothing is merged then.
    """
    pairs = [(Path(a), Path(d)) for a, d in inputs]
    if not pairs:
        raise DatasetError("no COCO files to merge")
    twice = [f"{a} {d}" for (a, d), n in Counter((absolute(a), absolute(d))
                                                  for a, d in pairs).items() if n > 1]
    if twice:  # every object twice: a val set's recall halved
        raise DatasetError("--input given twice:" + listing(twice))
    folders = [d for _, d in pairs if not d.is_dir()]
    if folders:
        raise DatasetError("image folders not found:" + listing([str(f) for f in folders]))
    files = [read_coco_json(a) for a, _ in pairs]
    root = absolute(img_dir) if img_dir is not None else _common_folder([d for _, d in pairs])
    problems: list[str] = []
    names = [_names_of_ids(a, data, problems) for (a, _), data in zip(pairs, files)]
    found: Counter[str] = Counter(names[i][o["category_id"]] for i, data in enumerate(files)
                                  for o in data["annotations"])
    first_in = {}  # a class name -> the first file with an object of it
    for (ann_file, _), data, name_of in zip(pairs, files, names):
        for o in data["annotations"]:
            first_in.setdefault(name_of[o["category_id"]], str(ann_file))
    if class_names is None:
        category_id = _first_files_ids(names)
        warn_of_twin_spellings(list(category_id), found, first_in)
    else:
        category_id = ids_of_classes(found, class_names, category_ids, problems, first_in)
    licenses, license_id = _licenses(files)
    images: dict[Path, dict[str, Any]] = {}
    first_named_by: dict[Path, int] = {}  # an image -> the first file naming it
    shared: set[Path] = set()
    unknown_license = 0
    image_id: list[dict[Any, int]] = []
    for number, ((ann_file, folder), data, name_of, licensed) in enumerate(
            zip(pairs, files, names, license_id)):
        ids: dict[Any, int] = {}
        missing = []
        for img in data["images"]:
            name_by_coco_url(img, folder)  # (LVIS v0.5's COCO 2014 names)
            # as given, symlinks kept (a datasets/coco link, DVC's linked files): the file
            # names stay under the folders the user named; Windows' backslashes as training
            # reads them
            path = absolute(image_path(folder, img["file_name"]))
            if path in images:
                kept = images[path]
                if (kept["width"], kept["height"]) != (img["width"], img["height"]):
                    problems.append(f"{ann_file}: image {img['file_name']} is "
                                    f"{img['width']}x{img['height']}, another file gives "
                                    f"{kept['width']}x{kept['height']}")
                ids[img["id"]] = kept["id"]
                if first_named_by[path] != number:  # (not a file's own repeated entry)
                    shared.add(path)
                continue
            if not path.is_file():
                missing.append(img["file_name"])
            relative = os.path.relpath(path, root)
            if not path.is_relative_to(root):
                problems.append(f"{ann_file}: image {path} is outside the img_dir {root}")
            given = img.get("license")  # an id of its file's licenses: the merged list's
            img = {k: v for k, v in img.items() if k != "license"}
            if isinstance(given, (int, str)) and given in licensed:
                img["license"] = licensed[given]
            elif given is not None:
                unknown_license += 1
            first_named_by[path] = number
            images[path] = {**img, "id": len(images) + 1,
                            "file_name": Path(relative).as_posix(),
                            **{k: [category_id[name_of[c]] for c in listed
                                   if name_of.get(c) in category_id]
                               for k, listed in _category_lists(img, ann_file, problems)}}
            ids[img["id"]] = len(images)
        if missing:
            problems.append(f"{ann_file}: {len(missing)} of {len(data['images'])} images not "
                            f"found under {folder} (is it this file's image folder?):"
                            + listing(missing))
        image_id.append(ids)
    raise_problems(problems, "the COCO files")
    annotations, repeated, near_repeats = _once_across_files([
        [{**o, "id": 0, "image_id": image_id[i][o["image_id"]],
          "category_id": category_id[names[i][o["category_id"]]]} for o in data["annotations"]]
        for i, data in enumerate(files)])
    for number, annotation in enumerate(annotations, 1):
        annotation["id"] = number
    if unknown_license:
        logger.warning("%d images name a license id their file's `licenses` lacks: written "
                       "without one", unknown_license)
    if near_repeats:
        logger.warning("%d objects of a later file have a box of the same class overlapping an "
                       "earlier file's by IoU %g or more on the same image, and another box or "
                       "mask: both are kept (two exports of the same photos, one corrected? "
                       "Give one export of each photo, or a val set counts its objects twice)",
                       near_repeats, NEAR_REPEAT)
    categories = _categories(category_id, files)
    sources = ", ".join(str(a) for a, _ in pairs)
    return Merged({"info": {"description": f"merged from {sources}"},
                   **({"licenses": licenses} if licenses else {}),
                   "images": sorted(images.values(), key=lambda img: img["id"]),
                   "annotations": annotations, "categories": categories}, root, repeated,
                  len(shared))


def _licenses(files: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[Any, int]]]:
    """The files' `licenses` as one list (one entry of each name and url, ids 1..N), and for
    each file its license ids' new ones."""
    merged: dict[str, dict[str, Any]] = {}
    new_ids: list[dict[Any, int]] = []
    for data in files:
        ids = {}
        for entry in data.get("licenses") or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), (int, str)):
                continue  # (nothing an image could name)
            key = json.dumps([entry.get("name"), entry.get("url")])
            kept = merged.setdefault(key, {**entry, "id": len(merged) + 1})
            ids[entry["id"]] = kept["id"]
        new_ids.append(ids)
    return list(merged.values()), new_ids


def _once_across_files(per_file: list[list[dict[str, Any]]]
                       ) -> tuple[list[dict[str, Any]], int, int]:
    """The files' annotations, leaving out each that an earlier file gives already (the same
    image, category, box, mask and crowd flag to a thousandth of a pixel: two exports of the
    same photos), how many were left out, and how many others of a later file have a box of
    the same class that overlaps an earlier file's by NEAR_REPEAT IoU or more (kept: a
    corrected box, or a near neighbour); one file's own repeats are its own and kept."""
    files_of_image: dict[int, set[int]] = {}
    for i, objects in enumerate(per_file):
        for o in objects:
            files_of_image.setdefault(o["image_id"], set()).add(i)
    first_file: dict[str, int] = {}
    kept, repeated = [], 0
    # per image and class, each file's boxes (of the images several files name)
    boxes: dict[tuple[int, int], dict[int, list[Any]]] = {}
    for i, objects in enumerate(per_file):
        for o in objects:
            if len(files_of_image[o["image_id"]]) > 1:
                key = json.dumps(_rounded([o["image_id"], o["category_id"], o.get("bbox"),
                                           o.get("segmentation"), o.get("iscrowd", 0)]),
                                 sort_keys=True)
                if first_file.setdefault(key, i) != i:
                    repeated += 1
                    continue
                boxes.setdefault((o["image_id"], o["category_id"]), {}).setdefault(
                    i, []).append(o["bbox"])
            kept.append(o)
    near = sum(_near_earlier_boxes(of_files) for of_files in boxes.values()
               if len(of_files) > 1)
    return kept, repeated, near


NEAR_REPEAT = 0.9  # box IoU of an object of a later file with an earlier file's of its class


def _near_earlier_boxes(of_files: dict[int, list[Any]]) -> int:
    """How many boxes of each file (of one image and class) overlap an earlier file's by
    NEAR_REPEAT IoU or more (each box 4 numbers: read_coco_json refuses others)."""
    def xyxy(given: list[Any]) -> np.ndarray:
        x, y, w, h = np.asarray(given, dtype=np.float64).reshape(-1, 4).T
        return np.stack([x, y, x + w, y + h], axis=1)

    files = sorted(of_files)
    near = 0
    for k, i in enumerate(files[1:], 1):
        earlier = xyxy([b for j in files[:k] for b in of_files[j]])
        every_later = xyxy(of_files[i])
        # in blocks: an IoU matrix of DOTA's thousands of boxes a class would take gigabytes
        for start in range(0, len(every_later), 512):
            later = every_later[start:start + 512]
            low = np.maximum(later[:, None, :2], earlier[None, :, :2])
            high = np.minimum(later[:, None, 2:], earlier[None, :, 2:])
            inter = np.prod(np.clip(high - low, 0, None), axis=2)
            union = (np.prod(later[:, 2:] - later[:, :2], axis=1)[:, None]
                     + np.prod(earlier[:, 2:] - earlier[:, :2], axis=1)[None, :] - inter)
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            near += int((iou >= NEAR_REPEAT).any(axis=1).sum())
    return near


def _common_folder(folders: Sequence[Path]) -> Path:
    try:
        return Path(os.path.commonpath([str(absolute(f)) for f in folders]))
    except ValueError:  # other drives (Windows)
        raise DatasetError("the image folders share no folder: give --img-dir") from None


def _names_of_ids(ann_file: Path, data: dict[str, Any], problems: list[str]) -> dict[int, str]:
    names = {c["id"]: c["name"] for c in data["categories"]}
    twice = sorted(n for n, k in Counter(names.values()).items() if k > 1)
    if twice:
        problems.append(f"{ann_file}: categories of the same name (matched by name here): "
                        + ", ".join(f"{n!r} (ids {[i for i, m in names.items() if m == n]})"
                                    for n in twice))
    return names


def _first_files_ids(names: Sequence[dict[int, str]]) -> dict[str, int]:
    """The first file's {name: id}, then later files' new names with the next ids."""
    category_id = {n: i for i, n in sorted(names[0].items())}
    for of_file in names[1:]:
        for _, name in sorted(of_file.items()):
            if name not in category_id:
                category_id[name] = max(category_id.values(), default=0) + 1
    return category_id


def _categories(category_id: dict[str, int], files: Sequence[dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """Each category as the first file naming it writes it (its supercategory, LVIS's
    frequency...), with its merged id."""
    written: dict[str, dict[str, Any]] = {}
    for data in files:
        for category in data["categories"]:
            written.setdefault(category["name"], category)
    return sorted(({**written.get(n, {"supercategory": "none"}), "id": i, "name": n}
                   for n, i in category_id.items()), key=lambda c: c["id"])


def _rounded(value: Any) -> Any:
    """`value` with every number a float to a thousandth: 10, 10.0 and 10.000000000000002 (a
    percent-to-pixel round trip of another export) are one coordinate."""
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(float(value), 3) + 0.0 if isinstance(value, (int, float)) \
        and not isinstance(value, bool) else value
