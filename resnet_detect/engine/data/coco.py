"""COCO instance annotations -> validated per-image records with contiguous labels.

A record (one per kept image, M objects):
    {"file_name": absolute path, "image_id": int, "height": int, "width": int,
     "boxes": float32 (M, 4) xyxy in original image pixels, clipped to the image,
     "classes": int64 (M,) contiguous labels 0..K-1,
     "segmentations": list of M COCO segmentations and "annotation_ids": their M
     annotations' ids (only with keep_segmentation=True)}

Everything that can be checked before training is checked here and reported with the file
and the offending entry; crowd regions and degenerate boxes are left out and counted. With
keep_segmentation, every kept object needs a `segmentation` (polygons, or an RLE of the
image's size); polygons with fewer than three points are dropped and counted, and objects
left without any polygon are left out and counted.
"""
from __future__ import annotations

import collections
import contextlib
import gc
import io
import json
import logging
import math
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..files import missing_path, unicode_twin_hint
from .images import decoded_size, image_size

logger = logging.getLogger(__name__)

MAX_LISTED = 10  # problems listed in one error message


class DatasetError(ValueError):
    """An annotation file or image folder that cannot be used; the message names the entry."""


@dataclass(frozen=True)
class CategoryMapping:
    """Dataset category ids <-> contiguous labels 0..K-1 (in increasing id order).

    Attributes:
        dataset_ids: category id of each contiguous label.
        names: category name of each contiguous label.
    """

    dataset_ids: tuple[int, ...]
    names: tuple[str, ...]
    _index: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.dataset_ids) != len(self.names):
            raise ValueError("dataset_ids and names must have the same length")
        object.__setattr__(self, "_index", {cid: i for i, cid in enumerate(self.dataset_ids)})

    @classmethod
    def from_categories(cls, categories: list[dict[str, Any]]) -> CategoryMapping:
        """Build from a COCO `categories` list (any order, any ids)."""
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in ordered), tuple(str(c["name"]) for c in ordered))

    @property
    def num_classes(self) -> int:
        return len(self.dataset_ids)

    def to_contiguous(self, dataset_id: int) -> int:
        """Contiguous label of a dataset category id."""
        try:
            return self._index[int(dataset_id)]
        except KeyError:
            raise KeyError(f"unknown category id {dataset_id}; known: "
                           f"{brief(self.dataset_ids)}") from None

    def to_dataset_ids(self, labels: np.ndarray) -> np.ndarray:
        """Dataset category ids (int64) of an array of contiguous labels."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {labels.min()}.."
                             f"{labels.max()}")
        return np.asarray(self.dataset_ids, dtype=np.int64)[labels]


@dataclass
class LoadStats:
    """What loading kept and left out."""

    images: int = 0
    # every object of the file's images, crowd and degenerate included (with data.classes:
    # of those categories; the others' are other_classes)
    annotations: int = 0
    kept_images: int = 0
    empty_images: int = 0
    boxes: int = 0
    crowd: int = 0
    ignored: int = 0  # objects marked "ignore": 1 (mmdetection's; crowd ones counted as crowd)
    other_classes: int = 0  # objects of the categories data.classes leaves out
    degenerate: int = 0
    degenerate_ids: list[Any] = field(default_factory=list)
    short_polygons: int = 0  # polygons of < 3 points dropped (keep_segmentation only)
    # objects without a usable polygon (keep_segmentation only: left out of training, kept
    # without a mask in a file to evaluate on), and their annotation ids
    no_mask: int = 0
    no_mask_ids: list[Any] = field(default_factory=list)
    beyond_image: int = 0  # boxes, crowd aside, reaching past their image (`reaches_past`)
    # objects whose polygons reach well past their box (`polygon_past_box`), and their ids
    off_box_ids: list[Any] = field(default_factory=list)
    # the first MAX_LISTED boxes (of the degenerate ones) with a NaN or infinite number
    non_finite: list[str] = field(default_factory=list)
    non_finite_count: int = 0


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Parsing COCO train2017 makes about 30 million objects and no reference cycles; the
    garbage collector's repeated passes over them took about 40 % of the time to load it
    (one pass is left, after the collector comes back)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_NUMBER_TYPES = frozenset({int, float})


def _all_numbers(values: list[Any]) -> bool:
    """Every value an int or a float, not a bool (JSON's numbers; numpy's floats too)."""
    return set(map(type, values)) <= _NUMBER_TYPES or all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


@collector_paused()
def read_coco_json(ann_file: str | Path, *, annotations_optional: bool = False
                   ) -> dict[str, Any]:
    """Parse a COCO file and check its structure; errors name the file and the entry.

    Args:
        ann_file: path to the COCO instances JSON.
        annotations_optional: a file without an `annotations` key (COCO's test-dev image
            info) reads as one with none.

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: it is not JSON, lacks images/annotations/categories, or has entries
            with missing fields, duplicate ids, unknown image or category ids.
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {missing_path(ann_file)}")
    raw = ann_file.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        gzipped = " (a gzip file: decompress it first)" if raw[:2] == b"\x1f\x8b" else ""
        raise DatasetError(f"{ann_file}: not valid JSON{gzipped} ({err})") from None
    del raw  # (a COCO file's bytes: hundreds of MB held through the checks below)
    if isinstance(data, list) and data and isinstance(data[0], dict) and "score" in data[0]:
        raise DatasetError(f"{ann_file} is a results file (a list of detections, as "
                           f"tools/eval.py writes), not a COCO annotation file: score it with "
                           f"tools/eval.py --results against the annotation file")
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: expected a JSON object at the top level")
    if isinstance(data.get("annotations"), list) and data["annotations"] and isinstance(
            data["annotations"][0], dict) and "segments_info" in data["annotations"][0]:
        raise DatasetError(f"{ann_file} is a COCO panoptic file (segments_info): training and "
                           f"evaluation read COCO instances files (instances_*.json)")
    if annotations_optional and "annotations" not in data:
        data["annotations"] = []
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(f"{ann_file}: missing or not a list: {', '.join(missing)} "
                           "(a COCO instances file needs images, annotations and categories)")
    for img in data["images"]:
        if isinstance(img, dict) and img.get("file_name") is None \
                and (name := _file_name_from_url(img.get("coco_url"))):
            # LVIS: a COCO image, in the folder its URL names (train2017/ or val2017/) under
            # the image folder, as detectron2 reads it
            img["file_name"] = name
    problems: list[str] = []
    category_ids = _check_entries(data["categories"], "categories", {"id": int, "name": str},
                                  problems)
    image_ids = _check_entries(data["images"], "images",
                               {"id": int, "file_name": str, "height": int, "width": int},
                               problems)
    if not data["categories"]:
        problems.append("'categories' is empty")
    absolute = []  # (their common folder: what to strip)
    for i, img in enumerate(data["images"]):
        name = img.get("file_name") if isinstance(img, dict) else None
        if isinstance(name, str):
            reason = _unsafe_path_reason(name)
            if reason:
                problems.append(f"images[{i}] (id={img.get('id')}): file_name {name!r} {reason}")
            if reason == ABSOLUTE:
                absolute.append(name)
        for key in ("height", "width"):
            if isinstance(img, dict) and isinstance(img.get(key), int) and img[key] <= 0:
                problems.append(f"images[{i}] (id={img.get('id')}): {key} must be positive")
    _check_entries(data["annotations"], "annotations",
                   {"id": int, "image_id": int, "category_id": int, "bbox": list}, problems)
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            continue
        if isinstance(ann.get("image_id"), int) and ann["image_id"] not in image_ids:
            problems.append(f"{_where('annotations', i, ann)}: image_id {ann['image_id']} is "
                            f"not in 'images'")
        if isinstance(ann.get("category_id"), int) and ann["category_id"] not in category_ids:
            problems.append(f"{_where('annotations', i, ann)}: category_id "
                            f"{ann['category_id']} is not in 'categories' (known ids: "
                            f"{brief(sorted(category_ids))})")
        bbox = ann.get("bbox")
        if isinstance(bbox, list) and (len(bbox) != 4 or not _all_numbers(bbox)):
            problems.append(f"{_where('annotations', i, ann)}: bbox must be 4 numbers [x, y, w, "
                            f"h], got {bbox!r}")
        if ann.get("area") is not None and not _all_numbers([ann["area"]]):  # compared
            problems.append(f"{_where('annotations', i, ann)}: area must be a number (or null "
                            f"or left out: the mask's or the box's is used), got "
                            f"{ann['area']!r}")
        if ann.get("iscrowd", 0) not in (0, 1):  # "0" as text counted as a crowd
            problems.append(f"{_where('annotations', i, ann)}: iscrowd must be 0 or 1, got "
                            f"{ann['iscrowd']!r}")
    if problems:
        raise DatasetError(_format_problems(ann_file, problems) + _absolute_names_hint(absolute))
    return data


def _absolute_names_hint(names: list[str]) -> str:
    """What to strip of absolute file names (Label Studio's "/data/upload/1/x.jpg", a script's
    full paths): the folder they share."""
    folders = [posixpath.dirname(n.replace("\\", "/")) for n in names]
    try:
        common = posixpath.commonpath(folders) if folders else ""
    except ValueError:  # (Windows drives and POSIX paths mixed)
        return ""
    if common in ("", "/"):
        return ""
    return (f"\nthe {len(names)} absolute file names lie under {common}/: write them without "
            f"it (relative to the image folder, which holds what {common}/ held)")


def read_user_text(path: Path, what: str) -> str:
    """A text file a user wrote: UTF-8, with or without the byte-order mark Windows' editors
    put first (it would be part of the first name)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{what} {path}: not UTF-8 text (byte {e.start}: "
                           f"{data[e.start:e.start + 1]!r}); save it as UTF-8") from None


def _file_name_from_url(url: Any) -> str:
    """The last two parts of a URL's path ("val2017/000000000139.jpg"), decoded when it is
    a URL (scheme://...; a plain path is taken as written); "" for no path."""
    if not isinstance(url, str):
        return ""
    path = unquote(urlsplit(url.strip()).path) if "://" in url else url
    return "/".join([p for p in path.split("/") if p][-2:])


# an LVIS val file's lists on every image: the categories checked absent, and those whose objects
# are not all annotated (scored with LVIS's federated AP: detection/federated.py)
IMAGE_LISTS = ("neg_category_ids", "not_exhaustive_category_ids")


def is_federated(dataset: dict[str, Any]) -> bool:
    """Whether every image of a ground-truth file lists the categories it was checked for."""
    images = dataset["images"]
    return bool(images) and all(key in img for img in images for key in IMAGE_LISTS)


# LVIS v0.5's names of COCO's images: COCO 2014's (COCO_train2014_000000001000.jpg)
_COCO_2014_NAME = re.compile(r"(.*/)?COCO_(train|val)2014_\d+\.jpg")


def name_by_coco_url(img: dict[str, Any], img_dir: Path) -> bool:
    """LVIS v0.5 names its images as COCO 2014 did beside a coco_url of COCO 2017's
    (train2017/000000001000.jpg): such an image not found by its file_name, whose coco_url
    names a file under `img_dir`, takes that file's name (as detectron2 reads LVIS: by
    coco_url); whether it did. Other names are left as they are (a COCO 2017 file under
    another folder stays "not found")."""
    if not _COCO_2014_NAME.fullmatch(str(img.get("file_name"))):
        return False
    name = _file_name_from_url(img.get("coco_url"))
    if name and not _unsafe_path_reason(name) and image_path(img_dir, name).is_file():
        img["file_name"] = name
        return True
    return False


def _coco_url_tried(img: dict[str, Any], img_dir: Path) -> str:
    """Where `name_by_coco_url` looked too, for an LVIS v0.5 image found nowhere."""
    if not _COCO_2014_NAME.fullmatch(str(img.get("file_name"))):
        return ""
    name = _file_name_from_url(img.get("coco_url"))
    return f", nor {image_path(img_dir, name)} (its coco_url's)" if name else ""


def _image_folder_hint(img_dir: Path, file_name: str) -> str:
    """Where a missing image lies after all: one folder up (an image folder one level too
    deep: Label Studio's "images/x.jpg" under .../images), or in the image folder without the
    file name's folders (CVAT's "job1/x.jpg" of a flat folder)."""
    name = image_path(Path(), file_name)
    if (img_dir.parent / name).is_file():
        return (f"\n{img_dir.parent / name} is there: is the image folder {img_dir.parent}?"
                + (f" (the file names start with {name.parts[0] + '/'!r})"
                   if len(name.parts) > 1 else ""))
    if len(name.parts) > 1 and (img_dir / name.name).is_file():
        return (f"\n{img_dir / name.name} is there: the images lie in the image folder "
                f"without the file names' folders ({name.parent.as_posix() + '/'!r}): rewrite "
                f"the names, or put the images in those folders")
    return ""


def _where(section: str, i: int, entry: dict[str, Any]) -> str:
    """An entry named in a problem ("annotations[7] (id=12)"); made only when there is one
    (an f-string per entry was a second of a COCO-scale file's loading)."""
    return f"{section}[{i}]" + (f" (id={entry['id']})" if "id" in entry else "")


def _check_entries(entries: list[Any], section: str, fields: dict[str, type],
                   problems: list[str]) -> set[int]:
    """Check required fields and id uniqueness of a section; return the set of ids."""
    ids: set[int] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"{section}[{i}]: expected an object, got {type(entry).__name__}")
            continue
        for key, kind in fields.items():
            value = entry.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                if kind is int and isinstance(value, float) and value.is_integer():
                    entry[key] = int(value)  # 160.0: pandas' exports, as pycocotools takes it
                    continue
                # an LVIS image is named by its coco_url: said where that names nothing
                url = (f", and its coco_url {entry['coco_url']!r} names no image file"
                       if key == "file_name" and "coco_url" in entry
                       and not _file_name_from_url(entry["coco_url"]) else "")
                problems.append(f"{_where(section, i, entry)}: missing or invalid {key!r} "
                                f"(expected {kind.__name__}, got {value!r}){url}")
        if isinstance(entry.get("id"), int):
            if entry["id"] in ids:
                problems.append(f"{_where(section, i, entry)}: duplicate id {entry['id']} in "
                                f"'{section}'")
            ids.add(entry["id"])
    return ids


ABSOLUTE = "is absolute; file names must be relative to the image folder"


def _unsafe_path_reason(file_name: str) -> str | None:
    if not file_name:
        return "is empty"
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")) or ":" in file_name[:3]:
        return ABSOLUTE
    # '/'-separated on every system: Windows' normpath turns "../" into "..\\"
    normal = posixpath.normpath(file_name.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        return "escapes the image folder ('..')"
    return None


def image_path(img_dir: Path, file_name: str) -> Path:
    """The image a COCO `file_name` names under `img_dir` (Windows' backslashes too)."""
    return img_dir / os.path.normpath(file_name.replace("\\", "/"))


def image_sizes(data: dict[str, Any]) -> dict[Any, tuple[int, int]]:
    """{image id: (height, width)} of a COCO file's content (as `read_coco_json` returns it)."""
    return {img["id"]: (img["height"], img["width"]) for img in data["images"]}


def reaches_past(bbox: Sequence[float], *, height: int, width: int) -> bool:
    """Whether an [x, y, width, height] box reaches over a pixel past the right or bottom
    edge of its height x width image, which no box of the image does."""
    x, y, w, h = bbox
    return x + w > width + 1 or y + h > height + 1


def polygon_past_box(polygons: list[list[float]], bbox: Sequence[float], *, height: int,
                     width: int) -> bool:
    """Whether `polygons`, within their height x width image, reach past the [x, y, width,
    height] box (within it too) by more than a pixel and a tenth of the box's side (COCO's
    boxes are their polygons' extent; a converter's box of a shape past the image is
    clipped, its polygon not: labelme's circles)."""
    xs = [v for polygon in polygons for v in polygon[0::2]]
    ys = [v for polygon in polygons for v in polygon[1::2]]
    if not xs:
        return False
    left, right, top, bottom = min(xs), max(xs), min(ys), max(ys)  # (once: a loading's hot path)
    if left >= width or right <= 0 or top >= height or bottom <= 0:
        return True  # (wholly past the image: nothing of it within)
    x, y, w, h = (float(v) for v in bbox)
    bx0, by0, bx1, by1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    dx, dy = 1 + 0.1 * (bx1 - bx0), 1 + 0.1 * (by1 - by0)
    return (max(left, 0.0) < bx0 - dx or min(right, width) > bx1 + dx
            or max(top, 0.0) < by0 - dy or min(bottom, height) > by1 + dy)


def warn_of_boxes_beyond_images(beyond: int, boxes: int, source: Path,
                                consequence: str) -> None:
    """A warning where `beyond` of `boxes` boxes, a tenth or more, reach past their images
    (`reaches_past`): [x1, y1, x2, y2] boxes read as COCO's (a converter's mistake, which
    nothing else shows), or boxes of resized images."""
    if boxes and beyond >= 0.1 * boxes:
        logger.warning("%s: %d of %d boxes reach beyond their image (x + width past its width, "
                       "or y + height past its height): are they [x1, y1, x2, y2]? %s (or "
                       "boxes of resized images?)", source, beyond, boxes, consequence)


def _warn_of_repeated_files(data: dict[str, Any], ann_file: Path) -> None:
    """A warning where one image file is listed under several image ids (as a bad merge
    leaves it): each entry is trained and scored as an image of its own, with the objects of
    the others as background."""
    ids_of: dict[str, list[Any]] = {}
    for img in data["images"]:
        ids_of.setdefault(posixpath.normpath(img["file_name"].replace("\\", "/")),
                          []).append(img["id"])
    repeated = {name: ids for name, ids in ids_of.items() if len(ids) > 1}
    if repeated:
        examples = ", ".join(f"{name!r} (ids {brief(ids, 5)})"
                             for name, ids in list(repeated.items())[:3])
        logger.warning("%s: %d image files are listed under more than one image id, e.g. %s: "
                       "each entry is trained and scored as its own image, the other entries' "
                       "objects as background; give each file one entry with all its objects",
                       ann_file, len(repeated), examples)


def brief(values: Sequence[Any], shown: int = 20) -> str:
    """`values` as a list in a message, the first `shown` of them when there are more (LVIS
    has 1203 categories)."""
    values = list(values)
    if len(values) <= shown:
        return str(values)
    return f"{str(values[:shown])[:-1]}, ... ({len(values)} in all)]"


def listing(items: list[str]) -> str:
    """The first MAX_LISTED items, one per line, and how many more there are."""
    more = f"\n  ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return "\n  " + "\n  ".join(items[:MAX_LISTED]) + more


def segmentation_to_rle(segmentation: list[list[float]] | dict[str, Any], height: int,
                        width: int) -> dict[str, Any]:
    """The compressed RLE of a COCO segmentation (polygons, RLE or uncompressed RLE)."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def rle_string_counts(counts: str | bytes) -> np.ndarray:
    """The run lengths a compressed COCO RLE string holds (pycocotools' rleFrString, in numpy):
    each count is 5-bit groups in characters 48..111, low bits first, 0x20 = more to come,
    0x10 in the last group = negative; counts after the second are differences from the count
    two before.

    Raises:
        ValueError: a character outside the format, or an unfinished last count.
    """
    try:
        raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    except UnicodeEncodeError:
        raise ValueError("RLE counts string has characters outside the compressed format") \
            from None
    chars = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    if chars.min() < 0 or chars.max() > 63:
        raise ValueError("RLE counts string has characters outside the compressed format")
    last = (chars & 0x20) == 0  # the last character of each count
    if not last[-1]:
        raise ValueError("RLE counts string ends inside a count")
    group = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    position = np.arange(chars.size) - starts[group]
    values = np.add.reduceat((chars & 0x1f) << (5 * position), starts)
    lengths = np.diff(np.append(starts, chars.size))
    if lengths.max() > 7:  # 35 bits: no image has runs that long (and int64 would wrap)
        raise ValueError("RLE counts string holds a run too long for any image")
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    # counts[m] += counts[m - 2] for m > 2: running sums along odd and even positions from 1
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    return values


def segmentation_to_mask(segmentation: list[list[float]] | dict[str, Any], height: int,
                         width: int) -> np.ndarray:
    """uint8 (H, W) mask of a COCO segmentation (polygons, RLE or uncompressed RLE)."""
    return mask_utils.decode(segmentation_to_rle(segmentation, height, width))


def _format_problems(ann_file: Path, problems: list[str]) -> str:
    return f"{ann_file}: {len(problems)} problem(s):" + listing(problems)


def chosen_categories(categories: list[dict[str, Any]], classes: Sequence[str],
                      ann_file: str | Path) -> list[dict[str, Any]]:
    """The categories of a file that `classes` (data.classes: names) chooses, every name
    found (a name several categories share chooses each)."""
    names = {str(c["name"]) for c in categories}
    unknown = [name for name in classes if name not in names]
    if unknown:
        by_case = {name.casefold(): name for name in sorted(names)}
        close = [f"{name!r} -> {by_case[name.casefold()]!r}" for name in unknown
                 if name.casefold() in by_case]
        raise DatasetError(f"data.classes names {unknown}, not categories of {ann_file} (its "
                           f"categories: {brief(sorted(names))})"
                           + (f"; names are matched as written, in case too: "
                              f"{', '.join(close)}?" if close else ""))
    return [c for c in categories if str(c["name"]) in set(classes)]


def only_categories(data: dict[str, Any], category_ids: Iterable[int]) -> dict[str, Any]:
    """A COCO file's content with the categories `category_ids` alone and their objects
    (its images all kept): a subset trained and scored as mmdetection's metainfo classes."""
    keep = set(category_ids)
    return {**data, "categories": [c for c in data["categories"] if c["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["category_id"] in keep]}


@collector_paused()
def load_coco_json(ann_file: str | Path, img_dir: str | Path, *, filter_empty: bool = False,
                   keep_segmentation: bool = False, check_files: bool = True,
                   training: bool = False, evaluation: bool = False,
                   check: Callable[[dict[str, Any], Path], None] | None = None,
                   classes: Sequence[str] | None = None,
                   ) -> tuple[list[dict[str, Any]], CategoryMapping, LoadStats]:
    """Load a COCO instances file into training records.

    Args:
        ann_file: COCO instances JSON.
        img_dir: folder that `file_name` entries are relative to.
        filter_empty: drop images left without objects (after removing crowd and degenerate
            boxes); by default they are kept as negatives.
        keep_segmentation: keep each object's `segmentation` in the record (for masks),
            checked: a missing or malformed one is an error.
        check_files: verify up front that every image file exists.
        training: the training split: a category without a usable object is named (the model
            would learn a class it never sees).
        evaluation: a file to evaluate on: it may leave out `annotations` (test-dev: images to
            predict), and an object without a `segmentation` or a polygon of 3 points keeps its
            box with None there (the segm evaluation ignores it, the bbox one scores it); a
            malformed segmentation is still an error.
        check: called with the file's content and path once it is read (a task's own
            checks, e.g. an LVIS val file's lists and frequencies).
        classes: category names (data.classes): the file's other categories and their
            objects are left out (mmdetection's metainfo classes).

    Returns:
        (records in the file's image order, category mapping, statistics).

    Raises:
        DatasetError: invalid file content, or image files missing (all listed by entry).
    """
    ann_file, img_dir = Path(ann_file), Path(img_dir)
    data = read_coco_json(ann_file, annotations_optional=evaluation)
    if check is not None:
        check(data, ann_file)
    if not img_dir.is_dir():
        raise DatasetError(f"image folder not found: {missing_path(img_dir)} (for {ann_file})")
    if check_files:
        missing, renamed, first_missing = [], 0, None
        for i, img in enumerate(data["images"]):
            if (path := image_path(img_dir, img["file_name"])).is_file():
                continue
            if name_by_coco_url(img, img_dir):
                renamed += 1
                continue
            first_missing = first_missing or img["file_name"]
            missing.append(f"images[{i}] (id={img['id']}): {path}{unicode_twin_hint(path)}"
                           + _coco_url_tried(img, img_dir))
        if renamed:
            logger.info("%s: %d images not found by their file_name are read from the files "
                        "their coco_url names (LVIS v0.5's COCO 2014 names of COCO 2017's "
                        "images)", ann_file, renamed)
        if missing:  # (where some are found, the folder is right)
            raise DatasetError(_format_problems(
                ann_file, [f"image file not found for {m}" for m in missing])
                + (_image_folder_hint(img_dir, first_missing)
                   if len(missing) == len(data["images"]) else ""))
    _warn_of_repeated_files(data, ann_file)
    other_classes = 0
    if classes is not None:
        objects = len(data["annotations"])
        data = only_categories(data, [c["id"] for c in chosen_categories(
            data["categories"], classes, ann_file)])
        other_classes = objects - len(data["annotations"])
        logger.info("%s: data.classes keeps %d of its categories; %d objects of the others "
                    "left out", ann_file, len(data["categories"]), other_classes)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    mapping = CategoryMapping.from_categories(data["categories"])
    stats = LoadStats(images=len(data["images"]), other_classes=other_classes)
    records = []
    if keep_segmentation:
        refuse_normalised_polygons(data, ann_file)
    problems: list[str] | None = [] if keep_segmentation else None
    for img in data["images"]:
        record = _make_record(coco.imgToAnns.get(img["id"], []), img, img_dir, mapping, stats,
                              problems, optional_masks=evaluation, keep_ignored=evaluation)
        if len(record["classes"]) == 0:
            stats.empty_images += 1
            if filter_empty:
                continue
        records.append(record)
    if problems:
        raise DatasetError(_format_problems(ann_file, problems))
    warn_of_boxes_beyond_images(stats.beyond_image, stats.annotations - stats.crowd, ann_file,
                                "COCO boxes are [x, y, width, height]; they are clipped to "
                                "their images")
    stats.kept_images = len(records)
    # the scoring reads the file itself, as pycocotools does: a degenerate box there is an
    # object that no detection matches
    federated = evaluation and is_federated(data)
    scorer = "lvis-api" if federated else "pycocotools"
    crowd = ("scored as objects: LVIS's AP reads no iscrowd, as lvis-api" if federated
             else "ignored by the scoring")
    ids = (f"annotation ids {brief(stats.degenerate_ids, MAX_LISTED)}"
           if stats.degenerate else "")
    aside = (f"; crowd regions: %d ({crowd}), degenerate boxes: %d ({ids}{': ' * bool(ids)}"
             f"objects that no detection matches, as {scorer} scores them)" if evaluation else
             "; left out %d crowd and %d degenerate boxes" + (f" ({ids})" if ids else ""))
    logger.info("%s: %d of %d images (%d without objects%s), %d boxes" + aside, ann_file,
                stats.kept_images, stats.images, stats.empty_images,
                ", dropped" if filter_empty else ", kept", stats.boxes, stats.crowd,
                stats.degenerate)
    if stats.non_finite_count:  # (counted as degenerate above: a broken export, not a tiny box)
        logger.warning("%s: %d boxes hold NaN or infinite numbers, %s (a broken export?): %s%s",
                       ann_file, stats.non_finite_count,
                       "objects that no detection matches" if evaluation else "left out",
                       "; ".join(stats.non_finite),
                       "; ..." if stats.non_finite_count > len(stats.non_finite) else "")
    if stats.ignored and not evaluation:  # (the scoring says how it reads them: evaluation.py)
        logger.warning("%s: %d objects marked \"ignore\": 1 are left out of training, as "
                       "mmdetection leaves them out", ann_file, stats.ignored)
    if stats.off_box_ids:
        logger.warning("%s: %d objects have a polygon reaching past their box by more than a "
                       "tenth of it (annotation ids %s): polygons of another image size than "
                       "the boxes (resized images?), or of other objects? The mask head learns "
                       "each mask within its box", ann_file, len(stats.off_box_ids),
                       brief(stats.off_box_ids, MAX_LISTED))
    if stats.short_polygons or stats.no_mask:
        logger.warning("%s: dropped %d polygons with fewer than 3 points; %d objects without "
                       "a usable polygon%s %s", ann_file, stats.short_polygons, stats.no_mask,
                       f" (annotation ids {brief(stats.no_mask_ids, MAX_LISTED)})"
                       if stats.no_mask else "", "kept without a mask (their boxes count)"
                       if evaluation else "left out")
    used = set(np.concatenate([r["classes"] for r in records] or [np.zeros(0, np.int64)]))
    unused = [(cid, name) for k, (cid, name) in
              enumerate(zip(mapping.dataset_ids, mapping.names)) if k not in used]
    if unused and training:  # e.g. Roboflow's unused category 0, named like the dataset
        logger.warning("%s: no usable object of %s: a class all the same, which the model "
                       "never learns (its AP is n/a where the val data has none of it, else "
                       "about 0, lowering the mean AP); where it is none, drop it from %s",
                       ann_file, _unused_categories(unused, data["annotations"]),
                       "data.classes" if classes is not None else
                       "'categories' of the training and the val files, or name the classes "
                       "to train in data.classes")
    if training:
        _warn_of_twin_names(mapping, ann_file)
        counts = np.bincount(np.concatenate([r["classes"] for r in records]
                                            or [np.zeros(0, np.int64)]),
                             minlength=len(mapping.names))
        logger.info("%s: objects per category (the boxes trained on):\n%s", ann_file,
                    category_table(mapping.names, counts))
    return records, mapping, stats


TABLE_ROWS = 30  # more categories (LVIS's 1203): the most and the fewest only
NAME_WIDTH = 30  # longer names are cut in the table


def category_table(names: Sequence[str], counts: Sequence[int], columns: int = 3) -> str:
    """detectron2's "distribution of instances among all categories": "name  count" cells,
    `columns` to a line, in the categories' order; beyond TABLE_ROWS lines, the categories
    with the most and the fewest objects."""
    cells = list(zip(names, (int(c) for c in counts)))
    lines = []
    if len(cells) > TABLE_ROWS * columns:
        ranked = sorted(cells, key=lambda c: -c[1])
        half = TABLE_ROWS * columns // 2
        lines.append(f"{len(cells)} categories; the {half} with the most objects, then the "
                     f"{half} with the fewest ({sum(c == 0 for _, c in cells)} with none):")
        cells = ranked[:half] + [("...", None)] * columns + ranked[-half:]
    cells = [(name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 3] + "...", count)
             for name, count in cells]
    width = max(len(name) for name, _ in cells) if cells else 0
    digits = max((len(f"{count:,}") for _, count in cells if count is not None), default=0)
    for start in range(0, len(cells), columns):
        lines.append("   ".join(f"{name:<{width}} " + (f"{count:>{digits},}" if count is not None
                                                       else " " * digits)
                                for name, count in cells[start:start + columns]).rstrip())
    lines.append(f"total: {sum(int(c) for c in counts):,} objects")
    return "\n".join("  " + line for line in lines)


def alike_names(names: Sequence[str]) -> list[list[int]]:
    """The indices of `names` that are one name but for case and spaces ('Dog', 'dog '), in
    groups of two or more: two labelling tools' exports merged, or a typo."""
    groups: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        groups.setdefault(" ".join(name.split()).casefold(), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def _warn_of_twin_names(mapping: CategoryMapping, ann_file: Path) -> None:
    """Categories whose names differ only in case or spaces, trained as two classes, each
    the other's background (`alike_names`)."""
    groups = [", ".join(f"{mapping.names[k]!r} (id {mapping.dataset_ids[k]})" for k in g)
              for g in alike_names(mapping.names)]
    if groups:
        logger.warning("%s: categories of the same name, or of names differing only in case "
                       "or spaces: %s: each is a class, trained as the other's background; "
                       "give their objects one category id if they are one class", ann_file,
                       "; ".join(groups[:MAX_LISTED]))


def check_image_sizes(records: list[dict[str, Any]], ann_file: str | Path) -> None:
    """Every record's image is the height and width of its entry, as `read_image` gives it
    (after the EXIF orientation): by its header, and decoded where the header says otherwise.
    For a val split, whose images are first read by the evaluation after training, which
    would skip them: boxes in another frame cannot be scored. Images that cannot be read pass
    (they are skipped and counted when read).

    Raises:
        DatasetError: naming `ann_file` and every image whose size differs.
    """
    problems, swapped = [], 0
    for record in records:
        entry = (record["height"], record["width"])
        if image_size(record["file_name"]) in (None, entry):
            continue
        size = decoded_size(record["file_name"])
        if size not in (None, entry):
            swapped += size == entry[::-1]
            problems.append(f"{record['file_name']} (image id {record['image_id']}) is "
                            f"{size[1]}x{size[0]}, its entry says {entry[1]}x{entry[0]}")
    if problems:
        hint = (f"; {swapped} have width and height swapped: the tool that wrote the file "
                "took the stored size of photos that their EXIF orientation turns" if swapped
                else "")
        raise DatasetError(f"{ann_file}: {len(problems)} of {len(records)} images differ in size "
                           f"(width x height, after EXIF rotation) from their entries{hint}:"
                           + listing(problems))


FAR_OUTSIDE = 10  # image sizes: a polygon's point further from the image is a data error


def clipped_box(bbox: Sequence[float], *, width: int, height: int
                ) -> tuple[float, float, float, float] | None:
    """A COCO [x, y, w, h] as (x1, y1, x2, y2) clipped to the image; None where a number is
    NaN or infinite (a side of Infinity is no box, not one that reaches the edge)."""
    x, y, w, h = (float(v) for v in bbox)
    if not math.isfinite(x + y + w + h):
        return None
    return (min(max(x, 0.0), width), min(max(y, 0.0), height),
            min(max(x + w, 0.0), width), min(max(y + h, 0.0), height))


def box_polygon(bbox: Any, *, width: int, height: int) -> list[float] | None:
    """A COCO [x, y, w, h] clipped to the image, as a polygon (for an object whose mask is
    unknown); None where it is no box (degenerate, NaN, infinite: pycocotools would rasterise
    an unclipped one point by point, or crash on a NaN)."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and _all_numbers(bbox)):
        return None
    box = clipped_box(bbox, width=width, height=height)
    if box is None or not (box[2] > box[0] and box[3] > box[1]):
        return None
    x1, y1, x2, y2 = box
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def refuse_normalised_polygons(data: dict[str, Any], ann_file: str | Path) -> None:
    """A file whose every polygon lies within 0..1 holds normalised coordinates (YOLO's):
    every mask would be empty, and Mask R-CNN trains on them without a word. One polygon of
    pixels ends the check (a real file's first, as a rule)."""
    polygons = 0
    for ann in data["annotations"]:
        segmentation = ann.get("segmentation")
        for polygon in segmentation if isinstance(segmentation, list) else ():
            if isinstance(polygon, list) and len(polygon) >= 6 and _all_numbers(polygon):
                if not 0 <= min(polygon) <= max(polygon) <= 1:
                    return
                polygons += 1
    if polygons and any(max(im["height"], im["width"]) > 2 for im in data["images"]):
        raise DatasetError(f"{ann_file}: all its {polygons} polygons lie within 0..1: "
                           f"normalised coordinates (YOLO's?); COCO's are pixels of the image "
                           f"(tools/yolo_to_coco.py converts YOLO's labels)")


def check_segmentation(segmentation: Any, height: int, width: int
                       ) -> tuple[list[list[float]] | dict[str, Any], int]:
    """Validate a COCO segmentation; polygons with fewer than 3 points are dropped.

    Args:
        segmentation: an annotation's `segmentation`: a list of polygons [x1, y1, x2, ...],
            or an RLE {"size": [height, width], "counts": str or list}.
        height: the image's height.
        width: the image's width.

    Returns:
        (the segmentation without short polygons, number of polygons dropped).

    Raises:
        ValueError: the segmentation is missing, or an RLE's size is not the image's.
        TypeError: the segmentation is malformed.
    """
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not isinstance(counts, (str, list)):
            raise TypeError(f"RLE segmentation needs 'counts' (str or list), got {counts!r}")
        if size != [height, width]:
            raise ValueError(f"RLE segmentation size {size} is not the image's [height, width] "
                             f"= {[height, width]}")
        if isinstance(counts, list) and not all(type(c) is int and 0 <= c <= height * width
                                                for c in counts):
            raise ValueError(f"uncompressed RLE counts must be integers in 0..{height * width}")
        runs = np.asarray(counts, dtype=np.int64) if isinstance(counts, list) else (
            rle_string_counts(counts))
        # pycocotools decodes runs past the image into memory after it, and short ones leave
        # pixels unset (both: masks of garbage), and its IoU loops forever on the first kind
        if runs.size and runs.min() < 0:
            raise ValueError("RLE segmentation has negative run lengths")
        if int(runs.sum()) != height * width:
            raise ValueError(f"RLE segmentation runs cover {int(runs.sum())} pixels, not the "
                             f"image's {height}x{width} = {height * width}")
        # the size as integers: [96.0, 128.0] passes the check above but fails faster-coco-eval
        return {**segmentation, "size": [int(height), int(width)]}, 0
    if segmentation is None:
        raise ValueError("no 'segmentation' (polygons or RLE), which masks need")
    if not isinstance(segmentation, list):
        raise TypeError(f"segmentation must be polygons or an RLE, got "
                        f"{type(segmentation).__name__}")
    if segmentation and _all_numbers(segmentation):
        raise TypeError(f"segmentation is one flat list of numbers; COCO's polygons are a list "
                        f"of them: wrap it, [[x1, y1, x2, y2, ...]] (got {segmentation!r:.60})")
    kept = []
    # pycocotools rasterises a polygon point by point along its edges: a NaN crashes it, a
    # vertex at 1e12 fills the memory
    far = FAR_OUTSIDE * max(height, width)
    for polygon in segmentation:
        if not isinstance(polygon, list) or not _all_numbers(polygon):
            raise TypeError(f"a polygon must be a flat list of x, y numbers, got {polygon!r:.80}")
        if len(polygon) % 2:
            raise ValueError(f"a polygon holds an odd count of numbers ({len(polygon)}), not x, "
                             f"y pairs: {polygon!r:.80}")
        if len(polygon) < 6:
            continue
        if not math.isfinite(sum(polygon)):
            raise ValueError(f"a polygon has a coordinate that is no finite number (NaN or "
                             f"Infinity): {polygon!r:.80}")
        if min(polygon) < -far or max(polygon) > far:
            raise ValueError(f"a polygon has a point more than {FAR_OUTSIDE} image sizes "
                             f"outside the {width}x{height} image: {polygon!r:.80}")
        kept.append(polygon)
    return kept, len(segmentation) - len(kept)


def _unused_categories(unused: list[tuple[int, str]], annotations: list[dict[str, Any]]
                       ) -> str:
    """The categories without a trained object, for a warning: each one's name and id, and
    where all its objects are crowd regions, so (CVAT exports its masks so)."""
    objects = collections.Counter(a["category_id"] for a in annotations)
    crowd = collections.Counter(a["category_id"] for a in annotations if a.get("iscrowd", 0))
    named = [f"{name!r} (id {cid}" + (
        f": its {objects[cid]} objects are all crowd regions, \"iscrowd\": 1, which training "
        f"leaves out as detectron2 does; CVAT exports masks so: where they are objects, set "
        f"iscrowd 0)" if objects[cid] and crowd[cid] == objects[cid] else ")")
        for cid, name in unused[:MAX_LISTED]]
    return ", ".join(named) + (f", ... ({len(unused)} in all)" if len(unused) > MAX_LISTED
                               else "")


def _make_record(anns: list[dict[str, Any]], img: dict[str, Any], img_dir: Path,
                 mapping: CategoryMapping, stats: LoadStats,
                 problems: list[str] | None, optional_masks: bool = False,
                 keep_ignored: bool = False) -> dict[str, Any]:
    """The record of one image; `problems` (a list) asks for checked segmentations,
    `optional_masks` keeps objects without one (segmentation None), `keep_ignored` those
    marked "ignore" (counted either way)."""
    keep_segmentation = problems is not None
    height, width = img["height"], img["width"]
    boxes, classes, segmentations, annotation_ids = [], [], [], []
    stats.annotations += len(anns)
    def where(ann: dict[str, Any]) -> str:
        return f"annotation id={ann['id']} (image id={img['id']}, {img['file_name']})"

    for ann in anns:
        if ann.get("iscrowd", 0):
            stats.crowd += 1
            # a val file's crowd region is scored: a malformed mask was replaced by its box
            if keep_segmentation and optional_masks and ann.get("segmentation") is not None:
                try:
                    check_segmentation(ann["segmentation"], height, width)
                except (TypeError, ValueError) as err:
                    problems.append(f"{where(ann)}, a crowd region: {err}")
            continue
        if ann.get("ignore", 0):  # left out of training, as mmdetection does; the scoring
            stats.ignored += 1    # reads iscrowd alone (pycocotools overwrites "ignore")
            if not keep_ignored:
                continue
        stats.beyond_image += reaches_past(ann["bbox"], height=height, width=width)
        box = clipped_box(ann["bbox"], width=width, height=height)
        if box is None or not (box[2] - box[0] >= 1.0 and box[3] - box[1] >= 1.0):
            stats.degenerate += 1
            stats.degenerate_ids.append(ann["id"])
            if box is None:
                stats.non_finite_count += 1
                if len(stats.non_finite) < MAX_LISTED:
                    stats.non_finite.append(f"{where(ann)}: bbox {ann['bbox']}")
            continue
        if keep_segmentation and optional_masks and ann.get("segmentation") is None:
            segmentations.append(None)
        elif keep_segmentation:
            try:
                segmentation, dropped = check_segmentation(ann.get("segmentation"), height, width)
            except (TypeError, ValueError) as err:
                problems.append(f"{where(ann)}: {err}")
                continue
            stats.short_polygons += dropped
            if isinstance(segmentation, list) and polygon_past_box(
                    segmentation, ann["bbox"], height=height, width=width):
                stats.off_box_ids.append(ann["id"])
            if not segmentation:
                stats.no_mask += 1
                stats.no_mask_ids.append(ann["id"])
                if not optional_masks:
                    continue
            segmentations.append(segmentation or None)
        boxes.append(box)
        classes.append(mapping.to_contiguous(ann["category_id"]))
        annotation_ids.append(ann["id"])
    stats.boxes += len(boxes)
    record: dict[str, Any] = {
        "file_name": str(image_path(img_dir, img["file_name"])), "image_id": img["id"],
        "height": height, "width": width,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "classes": np.asarray(classes, dtype=np.int64),
    }
    if keep_segmentation:  # (the ids: a mask's problem found later names its annotation)
        record["segmentations"], record["annotation_ids"] = segmentations, annotation_ids
    return record
