"""LabelMe JSON annotations (one file per image, beside it or elsewhere) as one COCO-format dict,
which every tool here reads; masks for Mask R-CNN.

Each shape of a label is an object, as labelme's own labelme2coco makes them: shapes that share
a `group_id` and a label are one object of several parts. `polygon` shapes stay polygons,
`rectangle` becomes its four corners, `circle` (centre, a point on it) a 32-sided polygon, and
`mask` (labelme 5.3 on: a bitmap over its box) a run-length mask; the box is the parts' extent.
Points, lines and line strips mark no region and are counted and left out. A label named
`__ignore__` (labelme's convention) marks crowd regions: left out of training, detections on
them neither right nor wrong. Coordinates are pixels of the image as labelme shows it, after
its EXIF orientation, as the tools here read images.
"""
from __future__ import annotations

import base64
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from resnet_detect.engine.data import DatasetError, files_under, image_size

from .conversion import Problem, ids_of_classes, raise_problems, relative_image

IGNORE_LABEL = "__ignore__"
REGION_SHAPES = ("polygon", "rectangle", "circle", "mask")
CIRCLE_SIDES = 32


class _Part(NamedTuple):
    polygon: list[float] | None   # x1, y1, x2, y2, ... in pixels
    rle: dict[str, Any] | None    # or a run-length mask of the whole image


class LabelmeObject(NamedTuple):
    label: str
    parts: list[_Part]


def _points(shape: dict[str, Any], where: str) -> np.ndarray:
    try:
        points = np.asarray(shape.get("points"), dtype=np.float64)
    except (TypeError, ValueError):
        raise Problem(f"{where}: 'points' is not a list of [x, y]") from None
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise Problem(f"{where}: 'points' is not a list of [x, y] numbers")
    return points


def _part(shape: dict[str, Any], where: str, height: int, width: int) -> _Part:
    kind = shape.get("shape_type") or "polygon"
    points = _points(shape, where)
    if kind == "polygon":
        if len(points) < 3:
            raise Problem(f"{where}: a polygon of {len(points)} points")
        return _Part(points.ravel().tolist(), None)
    if kind == "rectangle":
        if len(points) != 2:
            raise Problem(f"{where}: a rectangle of {len(points)} points (2 expected)")
        (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
        return _Part([x1, y1, x2, y1, x2, y2, x1, y2], None)
    if kind == "circle":
        if len(points) != 2:
            raise Problem(f"{where}: a circle of {len(points)} points (centre and one on it)")
        centre, radius = points[0], float(np.linalg.norm(points[1] - points[0]))
        angles = np.arange(CIRCLE_SIDES) * 2 * math.pi / CIRCLE_SIDES
        circle = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return _Part(circle.ravel().tolist(), None)
    # a bitmap over the box the two points give (labelme's "mask" shape)
    try:
        bitmap = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))) > 0
    except Exception as err:  # a missing, cut or not-PNG mask
        raise Problem(f"{where}: its 'mask' cannot be read ({type(err).__name__})") from None
    x1, y1 = np.floor(points.min(axis=0)).astype(int)
    full = np.zeros((height, width), np.uint8)
    h, w = bitmap.shape[:2]
    full[max(y1, 0):max(min(y1 + h, height), 0), max(x1, 0):max(min(x1 + w, width), 0)] = \
        bitmap[max(-y1, 0):max(min(h, height - y1), 0), max(-x1, 0):max(min(w, width - x1), 0)]
    rle = mask_utils.encode(np.asfortranarray(full))
    rle["counts"] = rle["counts"].decode("ascii")
    return _Part(None, rle)


def read_labelme(json_file: Path, images: Path | None) -> tuple[Path, tuple[int, int],
                                                                 list[LabelmeObject], int]:
    """(image, (height, width), objects, shapes left out) of one labelme file; its image is
    its `imagePath` beside the file, else a file of its name in `images` (or beside it)."""
    try:
        data = json.loads(json_file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Problem(f"{json_file}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise Problem(f"{json_file}: no 'shapes' list (not a labelme file)")
    image_path = str(data.get("imagePath") or "").replace("\\", "/")
    folders = [images] if images is not None else []
    candidates = [json_file.parent / image_path] if image_path else []
    candidates += [f / Path(image_path).name for f in folders + [json_file.parent]
                   if image_path]
    image = next((c for c in candidates if c.is_file()), None)
    if image is None:
        raise Problem(f"{json_file}: its image {image_path!r} is not in "
                      f"{' or '.join(str(f) for f in [json_file.parent, *folders])}")
    size = image_size(image)
    if size is None:
        raise Problem(f"{image}: cannot be read as an image")
    declared = (data.get("imageHeight"), data.get("imageWidth"))
    if all(isinstance(v, int) and v > 0 for v in declared) and tuple(declared) != size:
        raise Problem(f"{json_file}: imageHeight x imageWidth {declared[0]}x{declared[1]}, "
                      f"its image {image} reads as {size[0]}x{size[1]}")
    groups: dict[Any, LabelmeObject] = {}
    left_out = 0
    for i, shape in enumerate(data["shapes"]):
        where = f"{json_file} shape {i}"
        label = str(shape.get("label") or "").strip() if isinstance(shape, dict) else ""
        if not label:
            raise Problem(f"{where}: no label")
        if (shape.get("shape_type") or "polygon") not in REGION_SHAPES:
            left_out += 1
            continue
        part = _part(shape, f"{where} ({label})", *size)
        group = shape.get("group_id")
        key = (label, group) if group is not None else ("", i)
        groups.setdefault(key, LabelmeObject(label, [])).parts.append(part)
    return image, size, list(groups.values()), left_out


def labelme_files(root: Path) -> list[Path]:
    """The labelme JSON files under `root` (every .json there)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    return [p for p in files_under(root) if p.suffix.lower() == ".json"]


class Conversion(NamedTuple):
    coco: dict[str, Any]
    left_out: int  # shapes that mark no region (points, lines)


def labelme_to_coco(json_files: Sequence[Path], img_dir: Path,
                    class_names: Sequence[str] | None = None, *, images: Path | None = None,
                    category_ids: Sequence[int] | None = None) -> Conversion:
    """The COCO dict of `json_files`, `file_name`s relative to `img_dir`, categories
    `class_names` (default: the labels found, sorted; `__ignore__` is never one) with ids
    `category_ids` (default 1..K); `images`: a folder the images may be in.

    Raises:
        DatasetError: naming each file or shape that cannot be converted (nothing is returned
            then), an image named twice, a label outside `class_names`.
    """
    if not json_files:
        raise DatasetError("no labelme JSON files found")
    problems, parsed, named_by, left_out = [], [], {}, 0
    for json_file in json_files:
        try:
            image, size, objects, skipped = read_labelme(json_file, images)
            relative = relative_image(image, img_dir, json_file, named_by)
            parsed.append((relative, size, objects))
            left_out += skipped
        except Problem as problem:
            problems.append(str(problem))
    found = Counter(o.label for _, _, objects in parsed for o in objects
                    if o.label != IGNORE_LABEL)
    names = sorted(found) if class_names is None else list(class_names)
    ids = ids_of_classes(found, names, category_ids, problems)
    raise_problems(problems, "the labelme files")
    return Conversion(_coco_dict(parsed, ids), left_out)


def _coco_dict(parsed: list[tuple[str, tuple[int, int], list[LabelmeObject]]],
               category_id: dict[str, int]) -> dict[str, Any]:
    images, annotations = [], []
    for image_id, (file_name, (height, width), objects) in enumerate(parsed, start=1):
        images.append({"id": image_id, "file_name": file_name, "height": height,
                       "width": width})
        for obj in objects:
            polygons = [p.polygon for p in obj.parts if p.polygon is not None]
            rles = [p.rle for p in obj.parts if p.rle is not None]
            if rles:  # a bitmap part: the object is one mask (its polygons drawn in)
                encoded = [dict(r, counts=r["counts"].encode("ascii")) for r in rles]
                if polygons:
                    encoded += mask_utils.frPyObjects(polygons, height, width)
                rle = mask_utils.merge(encoded)
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                segmentation: Any = {"size": [height, width],
                                     "counts": rle["counts"].decode("ascii")}
            else:
                xs = [v for p in polygons for v in p[0::2]]
                ys = [v for p in polygons for v in p[1::2]]
                x1, y1 = max(min(xs), 0.0), max(min(ys), 0.0)
                x2, y2 = min(max(xs), float(width)), min(max(ys), float(height))
                x, y, w, h = x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)
                rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
                segmentation = polygons
            # an __ignore__ region hides objects of any class: a crowd region of each
            # category (COCO's crowd regions belong to one)
            ids = list(category_id.values()) if obj.label == IGNORE_LABEL else \
                [category_id[obj.label]]
            for cat in ids:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                    "bbox": [x, y, w, h], "area": float(mask_utils.area(rle)),
                    "iscrowd": int(obj.label == IGNORE_LABEL), "segmentation": segmentation})
    categories = [{"id": i, "name": n, "supercategory": "none"} for n, i in category_id.items()]
    return {"images": images, "annotations": annotations, "categories": categories}
