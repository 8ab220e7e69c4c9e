"""Pascal VOC XML annotations (the VOC devkit, LabelImg, CVAT's and Roboflow's VOC exports) as
one COCO-format dict, which every tool here reads.

Boxes: VOC's `xmin..xmax` are 1-based pixel indices, both ends inclusive, so a box over the
whole image is 1..W; as detectron2 reads them, (xmin - 1, ymin - 1, xmax, ymax) is the box in
continuous coordinates (0..W), and COCO's bbox is [xmin - 1, ymin - 1, xmax - xmin + 1,
ymax - ymin + 1]. `difficult` objects become crowd regions (iscrowd 1: left out of training,
detections on them neither right nor wrong), as mmdetection's converter writes them and VOC's
evaluation ignores them; `keep_difficult` makes them ordinary objects (detectron2 trains on
them).
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_detect.engine.data import (IMAGE_SUFFIXES, DatasetError, files_under, image_size,
                                       listing)

# VOC's 20 classes, in detectron2's and mmdetection's order (alphabetical)
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


class _Problem(Exception):
    """An entry of one XML file that cannot be converted; the message names it."""


def _text(element: ET.Element, path: str, where: str) -> str:
    found = element.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise _Problem(f"{where}: no <{path}>")
    return found.text.strip()


def _number(element: ET.Element, path: str, where: str) -> float:
    text = _text(element, path, where)
    try:
        value = float(text)
    except ValueError:
        raise _Problem(f"{where}: <{path}> is not a number: {text!r:.40}") from None
    if not math.isfinite(value):
        raise _Problem(f"{where}: <{path}> is not a finite number: {text!r:.40}")
    return value


def _objects(root: ET.Element, where: str) -> list[tuple[str, list[float], bool]]:
    """(name, [xmin, ymin, xmax, ymax] as written, difficult) of each <object>."""
    objects = []
    for i, obj in enumerate(root.findall("object")):
        at = f"{where} object {i}"
        name = _text(obj, "name", at)
        box = obj.find("bndbox")
        if box is None:
            raise _Problem(f"{at} ({name}): no <bndbox>")
        coords = [_number(box, key, f"{at} ({name})") for key in ("xmin", "ymin", "xmax", "ymax")]
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise _Problem(f"{at} ({name}): xmax < xmin or ymax < ymin: {coords}")
        difficult = obj.find("difficult")
        is_difficult = difficult is not None and (difficult.text or "0").strip() not in ("0", "")
        objects.append((name, coords, is_difficult))
    return objects


def _xml_size(root: ET.Element) -> tuple[int, int] | None:
    """(height, width) of <size>, None where it is missing or zero (some tools write 0)."""
    size = root.find("size")
    if size is None:
        return None
    try:
        width, height = (int(float((size.findtext(k) or "0").strip())) for k in ("width", "height"))
    except ValueError:
        return None
    return (height, width) if width > 0 and height > 0 else None


def _find_image(xml_file: Path, root: ET.Element, image_folder: Path) -> Path | None:
    """The image of an XML file: <filename> in `image_folder`, else a file of the XML's name
    with an image suffix there."""
    file_name = (root.findtext("filename") or "").strip()
    if file_name and (image_folder / Path(file_name).name).is_file():
        return image_folder / Path(file_name).name
    for suffix in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"):
        if (image_folder / (xml_file.stem + suffix)).is_file():
            return image_folder / (xml_file.stem + suffix)
    candidates = [p for p in image_folder.glob(f"{xml_file.stem}.*")
                  if p.suffix.lower() in IMAGE_SUFFIXES]
    return candidates[0] if candidates else None


def annotation_files(root: Path, split: str | None) -> list[tuple[Path, Path]]:
    """(XML file, folder of its image) pairs under `root`: a VOC devkit year folder
    (Annotations/ and JPEGImages/; `split` names ImageSets/Main/<split>.txt, else every XML),
    or any folder of XML files beside their images (LabelImg's)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    if (root / "Annotations").is_dir():
        if split is None:
            xmls = sorted((root / "Annotations").glob("*.xml"))
        else:
            split_file = root / "ImageSets" / "Main" / f"{split}.txt"
            if not split_file.is_file():
                raise DatasetError(f"{split_file}: no such split file (--split {split})")
            names = [line.split()[0] for line in split_file.read_text(encoding="utf-8")
                     .splitlines() if line.strip()]
            xmls = [root / "Annotations" / f"{name}.xml" for name in names]
            missing = [str(x) for x in xmls if not x.is_file()]
            if missing:
                raise DatasetError(f"{len(missing)} annotation files of {split_file} are "
                                   f"missing:{listing(missing)}")
        return [(x, root / "JPEGImages") for x in xmls]
    if split is not None:
        raise DatasetError(f"{root}: --split needs a VOC devkit folder (with Annotations/ and "
                           "ImageSets/Main/); this one has no Annotations/")
    return [(x, x.parent) for x in files_under(root) if x.suffix.lower() == ".xml"]


def _read(xml_file: Path) -> ET.Element:
    try:
        return ET.parse(xml_file).getroot()
    except ET.ParseError as err:
        raise _Problem(f"{xml_file}: not valid XML ({err})") from None
    except OSError as err:
        raise _Problem(f"{xml_file}: cannot be read ({err})") from None


def voc_to_coco(pairs: Sequence[tuple[Path, Path]], img_dir: Path,
                class_names: Sequence[str] | None = None, *, keep_difficult: bool = False,
                category_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """The COCO dict of the XML files `pairs` (from `annotation_files`), with `file_name`s
    relative to `img_dir` and categories `class_names` (default: VOC's 20 classes where every
    name is one of them, else the names found, sorted) with ids `category_ids` (default 1..K).

    Raises:
        DatasetError: naming each file, object or image that cannot be converted (nothing is
            returned then): unreadable XML, a missing image or number, a reversed box, a name
            not in `class_names`, an image whose size is not the XML's.
    """
    if not pairs:
        raise DatasetError("no XML annotation files found")
    problems: list[str] = []
    parsed = []
    for xml_file, image_folder in pairs:
        try:
            root = _read(xml_file)
            objects = _objects(root, str(xml_file))
            image = _find_image(xml_file, root, image_folder)
            if image is None:
                raise _Problem(f"{xml_file}: its image is not in {image_folder} (<filename> "
                               f"{root.findtext('filename')!r}, nor {xml_file.stem}.*)")
            size = image_size(image)
            if size is None:
                raise _Problem(f"{image}: cannot be read as an image")
            declared = _xml_size(root)
            if declared is not None and declared != size:
                turned = " (turned by its EXIF orientation?)" if declared == size[::-1] else ""
                raise _Problem(f"{xml_file}: <size> says {declared[1]}x{declared[0]}, its "
                               f"image {image} reads as {size[1]}x{size[0]}{turned}")
            try:
                relative = os.path.relpath(os.path.abspath(image), os.path.abspath(img_dir))
            except ValueError:  # another drive (Windows)
                relative = ".."
            if relative == ".." or relative.startswith(".." + os.sep):
                raise _Problem(f"{image}: not under the image folder {img_dir}")
            parsed.append((Path(relative).as_posix(), size, objects))
        except _Problem as problem:
            problems.append(str(problem))
    found = Counter(name for _, _, objects in parsed for name, _, _ in objects)
    if class_names is None:
        class_names = VOC_CLASSES if set(found) <= set(VOC_CLASSES) else sorted(found)
    class_names = list(class_names)
    if len(set(class_names)) != len(class_names):
        repeated = sorted(n for n, c in Counter(class_names).items() if c > 1)
        raise DatasetError(f"class names given twice: {repeated}")
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        problems.append("object names not among the classes: "
                        + ", ".join(f"{n!r} ({found[n]} objects)" for n in unknown))
    if problems:
        raise DatasetError(f"{len(problems)} problems in the VOC annotations:{listing(problems)}")
    ids = list(category_ids) if category_ids is not None else range(1, len(class_names) + 1)
    return _coco_dict(parsed, dict(zip(class_names, ids)), keep_difficult)


def _coco_dict(parsed: list[tuple[str, tuple[int, int], list[tuple[str, list[float], bool]]]],
               category_id: dict[str, int], keep_difficult: bool) -> dict[str, Any]:
    images, annotations = [], []
    for image_id, (file_name, (height, width), objects) in enumerate(parsed, start=1):
        images.append({"id": image_id, "file_name": file_name, "height": height,
                       "width": width})
        for name, (xmin, ymin, xmax, ymax), difficult in objects:
            x1, y1 = min(max(xmin - 1.0, 0.0), width), min(max(ymin - 1.0, 0.0), height)
            x2, y2 = min(max(xmax, 0.0), width), min(max(ymax, 0.0), height)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": category_id[name], "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1), "iscrowd": int(difficult and not keep_difficult),
            })
    categories = [{"id": i, "name": n, "supercategory": "none"} for n, i in category_id.items()]
    return {"images": images, "annotations": annotations, "categories": categories}
