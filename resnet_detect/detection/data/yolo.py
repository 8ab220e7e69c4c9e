"""Ultralytics YOLO datasets (a data.yaml, images/ and labels/; CVAT's, Roboflow's and Label
Studio's YOLO exports) as COCO-format dicts, which every tool here reads.

A label file holds one object per line, `class cx cy w h` (a box) or `class x1 y1 x2 y2 ...`
(a polygon, YOLO's segmentation format), in fractions of the image's width and height (as
Ultralytics reads it, after the image's EXIF orientation). The box becomes COCO's [x, y, w, h]
in pixels; a polygon becomes the object's `segmentation` (for Mask R-CNN) and its extent the
box, as Ultralytics boxes it. Class k is category id k + 1 (named by `names`). An image without
a label file, or with an empty one, is an image without objects.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pycocotools import mask as mask_utils

from resnet_detect.engine.data import (IMAGE_SUFFIXES, DatasetError, files_under, image_size,
                                       listing)


class _Problem(Exception):
    """A line or a file that cannot be converted; the message names it."""


def read_data_yaml(data_yaml: Path) -> tuple[Path, dict[str, Any], list[str]]:
    """(dataset root, the YAML's content, class names) of an Ultralytics data.yaml."""
    try:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise DatasetError(f"{data_yaml}: cannot be read ({err})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError(f"{data_yaml}: no 'names' (the class names)")
    names = data["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{data_yaml}: 'names' must number the classes 0..K-1, got "
                               f"{sorted(names)}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{data_yaml}: 'names' must be a list or a mapping of class names")
    root = data_yaml.parent / str(data.get("path") or ".")
    return root, data, [str(n) for n in names]


def split_images(root: Path, data: dict[str, Any], split: str, data_yaml: Path) -> list[Path]:
    """The images of `split` (a key of the YAML: a folder, a text file of image paths, or a
    list of them, relative to `root`)."""
    entries = data.get(split)
    if entries is None:
        splits = [k for k in data if k in ("train", "val", "test")]
        raise DatasetError(f"{data_yaml}: no split {split!r} (it has {splits})")
    images: list[Path] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        path = root / str(entry)
        if not path.exists() and str(entry).startswith("../"):  # Roboflow's exports
            path = root / str(entry)[3:]
        if path.is_dir():
            images += [p for p in files_under(path) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            images += [root / line.strip() for line in lines if line.strip()]
        else:
            raise DatasetError(f"{data_yaml}: {split}: {path} does not exist")
    return images


def label_file(image: Path) -> Path:
    """Ultralytics' label file of an image: its path with the last `images` folder named
    `labels`, and .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _object(line: str, where: str, num_classes: int, height: int, width: int
            ) -> tuple[int, list[float], list[float] | None]:
    """(class, COCO bbox in pixels, polygon in pixels or None) of one label line."""
    values = line.split()
    try:
        cls, numbers = float(values[0]), [float(v) for v in values[1:]]
    except ValueError:
        raise _Problem(f"{where}: not numbers: {line!r:.60}") from None
    if cls != int(cls) or not 0 <= cls < num_classes:
        raise _Problem(f"{where}: class {values[0]} is not one of 0..{num_classes - 1}")
    if not (len(numbers) == 4 or (len(numbers) >= 6 and len(numbers) % 2 == 0)):
        raise _Problem(f"{where}: {len(numbers)} numbers after the class: 4 (a box) or an even "
                       "number from 6 (a polygon) expected")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in numbers):
        raise _Problem(f"{where}: coordinates must be fractions of the image (0..1): "
                       f"{line!r:.60}")
    if len(numbers) == 4:
        cx, cy, w, h = numbers
        x1, y1 = max(cx - w / 2, 0.0) * width, max(cy - h / 2, 0.0) * height
        x2, y2 = min(cx + w / 2, 1.0) * width, min(cy + h / 2, 1.0) * height
        return int(cls), [x1, y1, x2 - x1, y2 - y1], None
    polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(numbers)]
    xs, ys = polygon[0::2], polygon[1::2]
    box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return int(cls), box, polygon


def yolo_to_coco(images: Sequence[Path], img_dir: Path, class_names: Sequence[str]
                 ) -> dict[str, Any]:
    """The COCO dict of `images` and their label files, `file_name`s relative to `img_dir`.

    Raises:
        DatasetError: naming each image or label line that cannot be converted (nothing is
            returned then).
    """
    if not images:
        raise DatasetError("the split has no images")
    problems: list[str] = []
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image in images:
        try:
            size = image_size(image)
            if size is None:
                raise _Problem(f"{image}: missing or not an image")
            height, width = size
            labels = label_file(image)
            lines = labels.read_text(encoding="utf-8").splitlines() if labels.is_file() else []
            objects = [_object(line, f"{labels} line {n}", len(class_names), height, width)
                       for n, line in enumerate(lines, start=1) if line.strip()]
        except _Problem as problem:
            problems.append(str(problem))
            continue
        image_id = len(coco_images) + 1
        coco_images.append({"id": image_id,
                            "file_name": Path(os.path.relpath(image, img_dir)).as_posix(),
                            "height": height, "width": width})
        for cls, box, polygon in objects:
            annotation = {"id": len(annotations) + 1, "image_id": image_id,
                          "category_id": cls + 1, "bbox": box, "area": box[2] * box[3],
                          "iscrowd": 0}
            if polygon is not None:
                annotation["segmentation"] = [polygon]
                rle = mask_utils.frPyObjects([polygon], height, width)
                annotation["area"] = float(mask_utils.area(mask_utils.merge(rle)))
            annotations.append(annotation)
    if problems:
        raise DatasetError(f"{len(problems)} problems in the YOLO labels:{listing(problems)}")
    categories = [{"id": k + 1, "name": name, "supercategory": "none"}
                  for k, name in enumerate(class_names)]
    return {"images": coco_images, "annotations": annotations, "categories": categories}
