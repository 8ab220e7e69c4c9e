"""Pascal VOC XML annotations (the VOC devkit, LabelImg, CVAT's and Roboflow's VOC exports) as
one COCO-format dict, which every tool here reads.

Boxes: VOC's `xmin..xmax` are 1-based pixel indices, both ends inclusive, so a box over the
whole image is 1..W; as detectron2 reads them, (xmin - 1, ymin - 1, xmax, ymax) is the box in
continuous coordinates (0..W), and COCO's bbox is [xmin - 1, ymin - 1, xmax - xmin + 1,
ymax - ymin + 1] (CVAT's and Datumaro's exports write edges already: `zero_based` takes
them as they are). `difficult` objects become crowd regions (iscrowd 1: left out of training,
detections on them neither right nor wrong), as mmdetection's converter writes them and VOC's
evaluation ignores them; `keep_difficult` makes them ordinary objects (detectron2 trains on
them).
"""
from __future__ import annotations

import glob
import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from resnet_detect.engine.data import (IMAGE_SUFFIXES, DatasetError, files_under, image_size,
                                       listing, read_user_text)

from .conversion import Problem, coco_categories, ids_of_classes, raise_problems, relative_image

# VOC's 20 classes, in detectron2's and mmdetection's order (alphabetical)
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


def _text(element: ET.Element, path: str, where: str) -> str:
    found = element.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise Problem(f"{where}: no <{path}>")
    return found.text.strip()


def _number(element: ET.Element, path: str, where: str) -> float:
    text = _text(element, path, where)
    try:
        value = float(text)
    except ValueError:
        raise Problem(f"{where}: <{path}> is not a number: {text!r:.40}") from None
    if not math.isfinite(value):
        raise Problem(f"{where}: <{path}> is not a finite number: {text!r:.40}")
    return value


DIFFICULT = {"0": False, "": False, "false": False, "1": True, "true": True}


def _objects(root: ET.Element, where: str) -> list[tuple[str, list[float], bool]]:
    """(name, [xmin, ymin, xmax, ymax] as written, difficult) of each <object>."""
    objects = []
    for i, obj in enumerate(root.findall("object")):
        at = f"{where} object {i}"
        name = _text(obj, "name", at)
        box = obj.find("bndbox")
        if box is None:
            raise Problem(f"{at} ({name}): no <bndbox>")
        coords = [_number(box, key, f"{at} ({name})") for key in ("xmin", "ymin", "xmax", "ymax")]
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise Problem(f"{at} ({name}): xmax < xmin or ymax < ymin: {coords}")
        difficult = (obj.findtext("difficult") or "0").strip().lower()
        if difficult not in DIFFICULT:
            raise Problem(f"{at} ({name}): <difficult> is {difficult!r:.20}, not 0 or 1")
        objects.append((name, coords, DIFFICULT[difficult]))
    return objects


def _xml_size(root: ET.Element) -> tuple[int, int] | None:
    """(height, width) of <size>, None where it is missing or zero (some tools write 0)."""
    size = root.find("size")
    if size is None:
        return None
    try:
        width, height = (int(float((size.findtext(k) or "0").strip())) for k in ("width", "height"))
    except (ValueError, OverflowError):  # not a number, or inf
        return None
    return (height, width) if width > 0 and height > 0 else None


class VocEntry(NamedTuple):
    """An XML file, its item name (its path under Annotations/ or the folder given, without
    .xml) and the folders its image is looked for in, first to last."""

    xml: Path
    item: str
    image_folders: tuple[Path, ...]


def _find_image(entry: VocEntry, root: ET.Element) -> tuple[Path | None, Path | None]:
    """The image of an entry: a file named as the item with an image suffix in one of the
    folders (detectron2's and mmdetection's readers take the item's), else its <filename>
    (as written, else its base name) there; and the other image its <filename> names, where
    both are there (a copied XML's stale <filename>), else None."""
    stem = Path(entry.item).name
    file_name = (root.findtext("filename") or "").strip().replace("\\", "/")
    named = next((folder / candidate for folder in entry.image_folders
                  for candidate in ((file_name, Path(file_name).name) if file_name else ())
                  if (folder / candidate).is_file()), None)
    for folder in entry.image_folders:
        # STEM + an image suffix (not STEM.aug.jpg, another item's); of several (x.jpg and
        # x.png), the one <filename> names, else the first
        own = sorted(p for p in folder.glob(f"{glob.escape(stem)}.*")
                     if p.stem == stem and p.suffix.lower() in IMAGE_SUFFIXES)
        if own:
            chosen = next((p for p in own if named is not None and p.samefile(named)), own[0])
            return chosen, named if named is not None and not named.samefile(chosen) else None
    return named, None


def annotation_files(root: Path, split: str | None, images: Path | None = None
                     ) -> list[VocEntry]:
    """The XML files under `root`: a VOC devkit year folder (Annotations/ and JPEGImages/, sub
    folders too; `split` names ImageSets/Main/<split>.txt, one item per line, else every XML),
    or any folder of XML files beside their images (LabelImg's), or elsewhere: `images` is
    then the folder of the images (the same sub folders, or all in one)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    devkit = (root / "Annotations").is_dir()
    if not devkit and split is not None:
        raise DatasetError(f"{root}: --split needs a VOC devkit folder (with Annotations/ and "
                           "ImageSets/Main/); this one has no Annotations/")
    xml_root = root / "Annotations" if devkit else root
    if split is None:  # (the files as named: LabelImg on Windows may write X.XML)
        xmls = {x.relative_to(xml_root).with_suffix("").as_posix(): x
                for x in files_under(xml_root) if x.suffix.lower() == ".xml"}
        items = list(xmls)
    else:
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            there = sorted(p.stem for p in split_file.parent.glob("*.txt") if "_" not in p.stem)
            raise DatasetError(f"{split_file}: no such split file (--split {split}; "
                               f"{split_file.parent} has {there or 'none'})")
        items = [line.strip() for line in read_user_text(split_file, "split file").splitlines()
                 if line.strip()]
        xmls = {item: next((x for x in (xml_root / f"{item}.xml", xml_root / f"{item}.XML")
                            if x.is_file()), xml_root / f"{item}.xml") for item in items}
        missing = [str(xmls[item]) for item in items if not xmls[item].is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} annotation files of {split_file} are "
                               f"missing:{listing(missing)}")
    image_root = images if images is not None else root / "JPEGImages" if devkit else None
    entries = []
    for item in items:
        xml = xmls[item]
        parent = Path(item).parent
        folders = ((image_root / parent, image_root) if image_root is not None
                   else (xml.parent,))
        entries.append(VocEntry(xml, item, tuple(dict.fromkeys(folders))))
    return entries


def _read(xml_file: Path) -> ET.Element:
    """The XML's root, its tags without a namespace (<annotation xmlns="..."> or xmlns:voc:
    findall("object") found none of its objects, and the image read as background)."""
    try:
        root = ET.parse(xml_file).getroot()
        for element in root.iter():
            if isinstance(element.tag, str) and element.tag.startswith("{"):
                element.tag = element.tag.split("}", 1)[1]
        return root
    except ET.ParseError as err:
        raise Problem(f"{xml_file}: not valid XML ({err})") from None
    except ValueError as err:  # an encoding expat does not know (gbk, ...)
        raise Problem(f"{xml_file}: cannot be decoded ({err}); save it as UTF-8") from None
    except OSError as err:
        raise Problem(f"{xml_file}: cannot be read ({err})") from None


def default_classes(found: Sequence[str]) -> list[str]:
    """VOC's 20 classes where the names found are VOC's and more than half of them (a VOC split),
    else the names found, sorted (a dataset of person and car is two classes, not 20)."""
    names = set(found)
    if names <= set(VOC_CLASSES) and len(names) > len(VOC_CLASSES) // 2:
        return list(VOC_CLASSES)
    return sorted(names)


class VocConversion(NamedTuple):
    coco: dict[str, Any]
    fractional: int  # boxes with a coordinate that is not a whole number (pixel edges?)
    at_zero: int  # boxes with xmin or ymin 0, which no 1-based index is (a 0-based export?)
    beyond: int  # boxes reaching past their image, clipped to it
    # "XML: <filename> IMAGE" of the files whose <filename> names another image than the one
    # named as they are (which they were read with)
    other_filename: list[str]


def voc_to_coco(entries: Sequence[VocEntry], img_dir: Path,
                class_names: Sequence[str] | None = None, *, keep_difficult: bool = False,
                category_ids: Sequence[int] | None = None,
                zero_based: bool = False) -> VocConversion:
    """The COCO dict of `entries` (from `annotation_files`), with `file_name`s relative to
    `img_dir` and categories `class_names` (default: `default_classes`) with ids
    `category_ids` (default 1..K). `zero_based`: the coordinates are pixel-edge coordinates
    already (CVAT's and Datumaro's exports write x and x + w), taken without the - 1.

    Raises:
        DatasetError: naming each file, object or image that cannot be converted (nothing is
            returned then): unreadable XML, a missing image or number, a reversed box, a box
            with no area inside its image, a name not in `class_names`, an image whose size
            is not the XML's, an image named twice.
    """
    if not entries:
        raise DatasetError("no XML annotation files found")
    problems: list[str] = []
    parsed = []
    named_by: dict[str, Path] = {}
    first_in: dict[str, str] = {}  # a class name -> the file of its first object
    other_filename: list[str] = []
    shift = 0.0 if zero_based else 1.0
    for entry in entries:
        try:
            root = _read(entry.xml)
            objects = _objects(root, str(entry.xml))
            image, other = _find_image(entry, root)
            if other is not None:
                other_filename.append(f"{entry.xml}: <filename> {other}")
            if image is None:
                folders = " or ".join(str(f) for f in entry.image_folders)
                raise Problem(f"{entry.xml}: its image is not in {folders} (<filename> "
                              f"{root.findtext('filename')!r}, nor {Path(entry.item).name}.*)")
            size = image_size(image)
            if size is None:
                raise Problem(f"{image}: cannot be read as an image")
            declared = _xml_size(root)
            if declared is not None and declared != size:
                turned = (" (turned by its EXIF orientation?: where the boxes were drawn on "
                          "the image as stored, as LabelImg shows it, remove its orientation "
                          "tag, e.g. exiftool -Orientation= IMAGE, and it reads as they were "
                          "drawn)" if declared == size[::-1] else "")
                raise Problem(f"{entry.xml}: <size> says {declared[1]}x{declared[0]}, its "
                              f"image {image} reads as {size[1]}x{size[0]}{turned}")
            for i, (name, box, _) in enumerate(objects):
                x1, y1, x2, y2 = _clipped(box, size, shift)
                if x2 <= x1 or y2 <= y1:
                    raise Problem(f"{entry.xml} object {i} ({name}): <bndbox> {box} has no "
                                  f"area inside its {size[1]}x{size[0]} image")
            relative = relative_image(image, img_dir, entry.xml, named_by)
            parsed.append((relative, size, objects))
            for name, _, _ in objects:
                first_in.setdefault(name, str(entry.xml))
        except Problem as problem:
            problems.append(str(problem))
    found = Counter(name for _, _, objects in parsed for name, _, _ in objects)
    class_names = list(default_classes(list(found)) if class_names is None else class_names)
    ids = ids_of_classes(found, class_names, category_ids, problems, first_in)
    raise_problems(problems, "the VOC annotations")
    fractional = sum(any(v != int(v) for v in box) for _, _, objects in parsed
                     for _, box, _ in objects)
    at_zero = sum(box[0] == 0 or box[1] == 0 for _, _, objects in parsed
                  for _, box, _ in objects)
    beyond = sum(min(box[0], box[1]) < 0 or box[2] > width or box[3] > height
                 for _, (height, width), objects in parsed for _, box, _ in objects)
    return VocConversion(_coco_dict(parsed, ids, keep_difficult, shift), fractional, at_zero,
                         beyond, other_filename)


def _clipped(box: list[float], size: tuple[int, int], shift: float
             ) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) in pixel edges, inside the image, of [xmin, ymin, xmax, ymax] as
    written (`shift`: 1 for VOC's 1-based indices, 0 for edges)."""
    (xmin, ymin, xmax, ymax), (height, width) = box, size
    return (min(max(xmin - shift, 0.0), width), min(max(ymin - shift, 0.0), height),
            min(max(xmax, 0.0), width), min(max(ymax, 0.0), height))


def _coco_dict(parsed: list[tuple[str, tuple[int, int], list[tuple[str, list[float], bool]]]],
               category_id: dict[str, int], keep_difficult: bool,
               shift: float) -> dict[str, Any]:
    images, annotations = [], []
    for image_id, (file_name, (height, width), objects) in enumerate(parsed, start=1):
        images.append({"id": image_id, "file_name": file_name, "height": height,
                       "width": width})
        for name, box, difficult in objects:
            x1, y1, x2, y2 = _clipped(box, (height, width), shift)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": category_id[name], "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1), "iscrowd": int(difficult and not keep_difficult),
                **({"difficult": 1} if difficult and keep_difficult else {}),
            })
    return {"images": images, "annotations": annotations,
            "categories": coco_categories(category_id)}
