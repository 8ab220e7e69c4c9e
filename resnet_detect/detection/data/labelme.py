"""LabelMe JSON annotations (one file per image, beside it or elsewhere) as one COCO-format dict,
which every tool here reads; masks for Mask R-CNN.

Each shape of a label is an object, as labelme's own labelme2coco makes them: shapes that share
a `group_id` and a label are one object of several parts. `polygon` shapes stay polygons,
`rectangle` becomes its four corners (X-AnyLabeling's four-point rectangles too) and
X-AnyLabeling's `rotation` its turned box, `circle` (centre, a point on it) a 32-sided polygon,
and `mask` (labelme 5.3 on: a bitmap over its box) a run-length mask; the box is the parts'
extent; another shape type is refused, naming it.
Points, lines and line strips mark no region and are counted and left out. A label named
`__ignore__` (labelme's convention) marks crowd regions: left out of training, detections on
them neither right nor wrong; X-AnyLabeling's `difficult` shapes become crowd regions of their
category. Objects whose mask has no pixel (collinear points, zero size, off the image) are
counted and left out. Coordinates are pixels of the image as labelme shows it, after its EXIF
orientation, as the tools here read images.
"""
from __future__ import annotations

import base64
import contextlib
import glob
import io
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from resnet_detect.engine.data import IMAGE_SUFFIXES, DatasetError, files_under, image_size

from .conversion import Problem, coco_categories, ids_of_classes, raise_problems, relative_image

IGNORE_LABEL = "__ignore__"
REGION_SHAPES = ("polygon", "rectangle", "rotation", "circle", "mask")
MARK_SHAPES = ("point", "points", "line", "linestrip")  # no region: left out
CIRCLE_SIDES = 32


class NotLabelme(Exception):
    """A JSON file of another kind (a COCO file left among the labelme files)."""


class _Part(NamedTuple):
    polygon: list[float] | None   # x1, y1, x2, y2, ... in pixels
    rle: dict[str, Any] | None    # or a run-length mask of the whole image


class LabelmeObject(NamedTuple):
    label: str
    parts: list[_Part]
    difficult: bool = False  # X-AnyLabeling's flag: a crowd region of its category


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
    if kind in ("polygon", "rotation"):  # rotation: X-AnyLabeling's turned box, 4 corners
        if len(points) < 3:
            raise Problem(f"{where}: a {kind} of {len(points)} points")
        return _Part(points.ravel().tolist(), None)
    if kind == "rectangle":  # labelme: 2 corners; X-AnyLabeling: all 4
        if len(points) < 2:
            raise Problem(f"{where}: a rectangle of {len(points)} points")
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
        bitmap = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))
                            .convert("L")) > 0
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


def _image_of(json_file: Path, data: dict[str, Any], images: Path | None,
              written: list[Path] | None, sub_folder: Path) -> Path:
    """The image a labelme file names: by its name beside the file or in `images` (in its
    `sub_folder` there, the file's folder under the converted root, else at its top, as the
    VOC converter looks), else at its `imagePath` as written (without one, the image of the
    file's stem, as the VOC converter finds an XML's); an image only embedded (`imageData`) is
    written into `images`' `sub_folder` (else beside the file) when `written` is a list, which
    gets its path (and the folders made for it)."""
    image_path = str(data.get("imagePath") or "").replace("\\", "/")
    name = Path(image_path).name
    folders = list(dict.fromkeys([json_file.parent] + (
        [images / sub_folder, images] if images is not None else [])))
    candidates = [f / name for f in folders if name]
    if image_path:
        candidates += [json_file.parent / image_path]
    else:
        candidates += sorted(p for f in folders for p in f.glob(f"{glob.escape(json_file.stem)}.*")
                             if p.suffix.lower() in IMAGE_SUFFIXES)
    found = next((c for c in candidates if c.is_file()), None)
    if found is not None:
        return found
    where = " or ".join(str(f) for f in folders)
    embedded = data.get("imageData")
    if not embedded and not image_path:
        raise Problem(f"{json_file}: no imagePath, and no {json_file.stem}.* image in {where}")
    if not embedded:
        raise Problem(f"{json_file}: its image {image_path!r} is not in {where}")
    if written is None:
        raise Problem(f"{json_file}: its image {image_path!r} is not in {where}; the file "
                      f"embeds it (imageData): --write-embedded writes it into "
                      f"{images / sub_folder if images is not None else json_file.parent}")
    try:
        data_bytes = base64.b64decode(embedded)
        suffix = "." + (Image.open(io.BytesIO(data_bytes)).format or "png").lower()
    except Exception as err:  # not base64, not an image
        raise Problem(f"{json_file}: its imageData cannot be read ({type(err).__name__})") \
            from None
    folder = images / sub_folder if images is not None else json_file.parent
    target = folder / (name or json_file.stem + suffix.replace(".jpeg", ".jpg"))
    if target.exists():
        raise Problem(f"{json_file}: its embedded image would replace {target}, which is not "
                      f"its image {image_path!r}")
    made = [p for p in reversed([folder, *folder.parents]) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    written += made
    target.write_bytes(data_bytes)
    written.append(target)
    return target


def read_labelme(json_file: Path, images: Path | None, written: list[Path] | None = None,
                 sub_folder: Path = Path()
                 ) -> tuple[Path, tuple[int, int], list[LabelmeObject], int]:
    """(image, (height, width), objects, shapes left out) of one labelme file (`_image_of`:
    `written` a list, an embedded image is written and listed there; `sub_folder`: the
    file's folder under the converted root, its images' under `images` too).

    Raises:
        Problem: naming what cannot be converted. NotLabelme: a COCO file.
    """
    try:
        data = json.loads(json_file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Problem(f"{json_file}: not a readable JSON file ({err})") from None
    if isinstance(data, dict) and "shapes" not in data and "annotations" in data:
        raise NotLabelme(str(json_file))
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise Problem(f"{json_file}: no 'shapes' list (not a labelme file)")
    image = _image_of(json_file, data, images, written, sub_folder)
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
        kind = shape.get("shape_type") or "polygon"
        if kind in MARK_SHAPES:
            left_out += 1
            continue
        if kind not in REGION_SHAPES:
            raise Problem(f"{where} ({label}): shape_type {kind!r} is none of "
                          f"{', '.join(REGION_SHAPES + MARK_SHAPES)}")
        part = _part(shape, f"{where} ({label})", *size)
        group = shape.get("group_id")
        if isinstance(group, float) and group.is_integer():  # (1.0: a script's JSON)
            group = int(group)
        if group is not None and (isinstance(group, bool) or not isinstance(group, (int, str))):
            raise Problem(f"{where} ({label}): group_id must be a whole number or a string, "
                          f"got {group!r}")
        key = (label, group) if group is not None else ("", i)
        obj = groups.setdefault(key, LabelmeObject(label, [], bool(shape.get("difficult"))))
        obj.parts.append(part)
    return image, size, list(groups.values()), left_out


def labelme_files(root: Path, output: Path | None = None) -> list[Path]:
    """The labelme JSON files under `root` (every .json there but `output`, an earlier run's
    COCO file).

    Raises:
        DatasetError: `root` is not a folder, or `output` is a labelme file (writing the COCO
            file there would replace its shapes).
    """
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    if output is not None and output.is_file() and _has_shapes(output):
        raise DatasetError(f"--output {output} is a labelme file: the COCO file would replace "
                           f"its shapes; write it to another file")
    skip = os.path.abspath(output) if output is not None else None
    return [p for p in files_under(root)
            if p.suffix.lower() == ".json" and os.path.abspath(p) != skip]


def _has_shapes(json_file: Path) -> bool:
    """Whether `json_file` reads as a labelme file (a JSON object with 'shapes')."""
    try:
        data = json.loads(json_file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "shapes" in data


class Conversion(NamedTuple):
    coco: dict[str, Any]
    left_out: int     # shapes that mark no region (points, lines)
    no_area: int      # objects whose mask has no pixel (collinear, zero-size, off the image)
    other_files: int  # JSON files of another kind (COCO files) left aside
    beyond: int       # objects whose polygons reach past their image (their boxes clipped)


def labelme_to_coco(json_files: Sequence[Path], img_dir: Path,
                    class_names: Sequence[str] | None = None, *, images: Path | None = None,
                    category_ids: Sequence[int] | None = None,
                    write_embedded: bool = False, root: Path | None = None) -> Conversion:
    """The COCO dict of `json_files`, `file_name`s relative to `img_dir`, categories
    `class_names` (default: the labels found, sorted; `__ignore__` is never one) with ids
    `category_ids` (default 1..K); `images`: a folder the images may be in (a file's in the
    sub folder it has under `root`, or at the top);
    `write_embedded`: images only embedded in their file are written into `images` (else
    beside it), and removed again if the conversion fails.

    Raises:
        DatasetError: naming each file or shape that cannot be converted (nothing is returned
            or left written then), an image named twice, a label outside `class_names`.
    """
    written: list[Path] = []
    try:
        return _converted(json_files, img_dir, class_names, images, category_ids,
                          written if write_embedded else None, root)
    except BaseException:
        for path in reversed(written):  # (the images, then the folders made for them)
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
        raise


def _converted(json_files: Sequence[Path], img_dir: Path, class_names: Sequence[str] | None,
               images: Path | None, category_ids: Sequence[int] | None,
               written: list[Path] | None, root: Path | None) -> Conversion:
    problems, parsed, named_by, left_out, other = [], [], {}, 0, 0
    first_in: dict[str, str] = {}  # a label -> the file of its first object
    for json_file in json_files:
        try:
            sub_folder = (json_file.parent.relative_to(root) if root is not None
                          and json_file.parent.is_relative_to(root) else Path())
            image, size, objects, skipped = read_labelme(json_file, images, written, sub_folder)
            relative = relative_image(image, img_dir, json_file, named_by)
            parsed.append((relative, size, objects))
            for o in objects:
                first_in.setdefault(o.label, str(json_file))
            left_out += skipped
        except NotLabelme:
            other += 1
        except Problem as problem:
            problems.append(str(problem))
    if not parsed and not problems:
        raise DatasetError("no labelme JSON files found")
    found = Counter(o.label for _, _, objects in parsed for o in objects
                    if o.label != IGNORE_LABEL)
    names = sorted(found) if class_names is None else list(class_names)
    ids = ids_of_classes(found, names, category_ids, problems, first_in)
    raise_problems(problems, "the labelme files")
    coco, no_area, beyond = _coco_dict(parsed, ids)
    return Conversion(coco, left_out, no_area, other, beyond)


def _coco_dict(parsed: list[tuple[str, tuple[int, int], list[LabelmeObject]]],
               category_id: dict[str, int]) -> tuple[dict[str, Any], int, int]:
    images, annotations, no_area, beyond = [], [], 0, 0
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
            area = float(mask_utils.area(rle))
            if area == 0:
                no_area += 1
                continue
            beyond += not rles and (min(xs) < 0 or min(ys) < 0 or max(xs) > width
                                    or max(ys) > height)
            # an __ignore__ region hides objects of any class: a crowd region of each
            # category (COCO's crowd regions belong to one)
            ids = list(category_id.values()) if obj.label == IGNORE_LABEL else \
                [category_id[obj.label]]
            for cat in ids:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                    "bbox": [x, y, w, h], "area": area,
                    "iscrowd": int(obj.label == IGNORE_LABEL or obj.difficult),
                    "segmentation": segmentation})
    return {"images": images, "annotations": annotations,
            "categories": coco_categories(category_id)}, no_area, beyond
