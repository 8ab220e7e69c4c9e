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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pycocotools import mask as mask_utils

from resnet_detect.engine.config import is_positive_int
from resnet_detect.engine.data import (IMAGE_SUFFIXES, DatasetError, files_under, image_size,
                                       read_user_text)

from .conversion import Problem, absolute, coco_categories, raise_problems, relative_image


def read_dataset(path: Path) -> tuple[Path, dict[str, Any], list[str]]:
    """(dataset root, the YAML's content, class names) of an Ultralytics data.yaml, or of a
    folder holding one (data.yaml, dataset.yaml), or of a folder with classes.txt and images/
    (Label Studio's YOLO export: one split, "train")."""
    if path.is_dir():
        for name in ("data.yaml", "dataset.yaml"):
            if (path / name).is_file():
                return read_dataset(path / name)
        if (path / "classes.txt").is_file() and (path / "images").is_dir():
            names = [line.strip() for line in
                     read_user_text(path / "classes.txt", "class file").splitlines()
                     if line.strip()]
            return path, {"train": "images", "names": names}, _distinct(path / "classes.txt",
                                                                        names)
        raise DatasetError(f"{path}: no data.yaml, dataset.yaml, nor classes.txt with images/")
    try:
        data = yaml.safe_load(read_user_text(path, "dataset YAML"))
    except (OSError, yaml.YAMLError) as err:
        raise DatasetError(f"{path}: cannot be read ({err})") from None
    if not isinstance(data, dict) or "names" not in data and "nc" not in data:
        raise DatasetError(f"{path}: no 'names' (the class names)")
    if "names" not in data:  # as Ultralytics names them
        if not is_positive_int(data["nc"]):
            raise DatasetError(f"{path}: 'nc' must be the number of classes, got {data['nc']!r}")
        print(f"{path}: no 'names': classes named class_0..class_{data['nc'] - 1}")
        data = {**data, "names": [f"class_{k}" for k in range(data["nc"])]}
    shape = data.get("kpt_shape")  # a pose dataset's: [keypoints, 2 (x y) or 3 (x y v)]
    if shape is not None:  # ([17, 3.0] too, as Ultralytics reads it)
        if not (isinstance(shape, list) and len(shape) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and v == int(v) > 0 for v in shape) and shape[1] in (2, 3)):
            raise DatasetError(f"{path}: kpt_shape must be [keypoints, 2 or 3], got "
                               f"{shape!r:.40}")
        data = {**data, "kpt_shape": [int(v) for v in shape]}
    names = data["names"]
    if isinstance(names, dict):  # {"0": cat}: Ultralytics reads its keys as numbers
        names = {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v
                 for k, v in names.items()}
        if set(names) != set(range(len(names))):  # (keys of any types; 10 after 9)
            raise DatasetError(f"{path}: 'names' must number the classes 0..K-1, got "
                               f"{sorted(names, key=str)}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path}: 'names' must be a list or a mapping of class names")
    if "nc" in data and data["nc"] != len(names):  # as Ultralytics refuses it
        raise DatasetError(f"{path}: 'names' has {len(names)} classes but 'nc' is "
                           f"{data['nc']!r}; they must agree")
    root = path.parent / str(data.get("path") or ".")
    return root, data, _distinct(path, [str(n) for n in names])


def _distinct(path: Path, names: list[str]) -> list[str]:
    """The class names, refused where two classes share one (the COCO files, merge_coco and
    --classes-from match categories by name)."""
    shared = {name: [k for k, n in enumerate(names) if n == name]
              for name in names if names.count(name) > 1}
    if shared:
        raise DatasetError(f"{path}: classes of the same name: " + "; ".join(
            f"{name!r} (classes {', '.join(map(str, ks))})" for name, ks in shared.items())
            + "; give each class its own name, or relabel them as one class")
    return names


def _entry_path(root: Path, entry: Any) -> Path:
    path = root / str(entry)
    if not path.exists() and str(entry).startswith("../"):  # Roboflow's exports
        path = root / str(entry)[3:]
    return path


def split_exists(root: Path, data: dict[str, Any], split: str) -> bool:
    """Whether every folder or list file of `split` is there."""
    entries = data.get(split)
    return entries is not None and all(
        _entry_path(root, e).exists() for e in (entries if isinstance(entries, list)
                                                else [entries]))


def split_images(root: Path, data: dict[str, Any], split: str, source: Path,
                 empty_ok: bool = False) -> list[Path]:
    """The images of `split` (a key of the YAML: a folder, a text file of image paths, or a
    list of them, relative to `root`), each once; none refused unless `empty_ok`."""
    entries = data.get(split)
    if entries is None:
        splits = [k for k in data if k in ("train", "val", "test")]
        raise DatasetError(f"{source}: no split {split!r} (it has {splits})")
    images: list[Path] = []
    paths = [_entry_path(root, e) for e in (entries if isinstance(entries, list) else [entries])]
    for path in paths:
        if path.is_dir():
            images += [p for p in files_under(path) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            images += [_listed_image(line.strip(), path.parent, root) for line in
                       read_user_text(path, "image list").splitlines() if line.strip()]
        else:
            raise DatasetError(f"{source}: {split}: {path} does not exist (--splits names "
                               f"the splits to convert)")
    if not images and not empty_ok:
        raise DatasetError(f"{source}: its {split} split has no images ("
                           f"{', '.join(str(p) for p in paths)}; --splits names the splits to "
                           f"convert)")
    unique: dict[Path, Path] = {}  # an image listed twice (two entries, two lines) once
    for image in images:
        unique.setdefault(absolute(image), image)
    return list(unique.values())


def _listed_image(line: str, list_folder: Path, root: Path) -> Path:
    """An image path of a split's text file: ./x beside the file (Ultralytics'), else under
    the file's folder or the dataset's root, whichever holds it."""
    if line.startswith("./"):
        return list_folder / line[2:]
    candidates = [Path(line)] if Path(line).is_absolute() else [list_folder / line, root / line]
    return next((c for c in candidates if c.is_file()), candidates[-1])


def label_file(image: Path) -> Path:
    """Ultralytics' label file of an image: its path with the last `images` folder named
    `labels`, and .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


# how far outside 0..1 a coordinate may be and be clipped (exports write 1.0004 and -0.0011;
# Ultralytics leaves such an image out as corrupt)
TOLERANCE = 0.01


def _object(line: str, where: str, num_classes: int, height: int, width: int,
            keypoints: int | None) -> tuple[int, list[float], list[float] | None]:
    """(class, COCO bbox in pixels, polygon in pixels or None) of one label line; `keypoints`:
    a pose dataset's numbers of its keypoints (kpt_shape's K x D), after the box's four."""
    values = line.split()
    try:
        cls, numbers = float(values[0]), [float(v) for v in values[1:]]
    except ValueError:
        raise Problem(f"{where}: not numbers: {line!r:.60}") from None
    if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
        raise Problem(f"{where}: class {values[0]} is not one of 0..{num_classes - 1}")
    if keypoints is not None:
        if len(numbers) != 4 + keypoints:  # (Ultralytics: "labels require N columns")
            raise Problem(f"{where}: {len(numbers)} numbers after the class: 4 (the box) + "
                          f"{keypoints} (the keypoints of kpt_shape) expected")
        numbers = numbers[:4]
    if not (len(numbers) == 4 or (len(numbers) >= 6 and len(numbers) % 2 == 0)):
        raise Problem(f"{where}: {len(numbers)} numbers after the class: 4 (a box) or an even "
                      "number from 6 (a polygon) expected")
    if not all(math.isfinite(v) and -TOLERANCE <= v <= 1.0 + TOLERANCE for v in numbers):
        raise Problem(f"{where}: coordinates must be fractions of the image (0..1): "
                      f"{line!r:.60}")
    def clipped(v: float) -> float:
        return min(max(v, 0.0), 1.0)

    if len(numbers) == 4:  # its corners clipped (a clipped centre moved the edge inside too)
        cx, cy, w, h = numbers
        x1, y1 = clipped(cx - w / 2) * width, clipped(cy - h / 2) * height
        x2, y2 = clipped(cx + w / 2) * width, clipped(cy + h / 2) * height
        box, polygon = [x1, y1, x2 - x1, y2 - y1], None
    else:
        polygon = [clipped(v) * (width if i % 2 == 0 else height)
                   for i, v in enumerate(numbers)]
        xs, ys = polygon[0::2], polygon[1::2]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    if box[2] <= 0 or box[3] <= 0:  # an object no detection can match (as VOC's are refused)
        raise Problem(f"{where}: an object of no width or height ({box[2]:g}x{box[3]:g} px): "
                      f"{line!r:.60}")
    return int(cls), box, polygon


def _line_key(line: str) -> Any:
    """What makes two label lines the same object: their numbers (0.5 is 0.50, as Ultralytics
    compares them), or the text of a line that is not numbers."""
    try:
        return tuple(float(v) for v in line.split())
    except ValueError:
        return line.strip()


class Conversion(NamedTuple):
    """A split's COCO dict; the label lines left out as repeats of an earlier one, the
    polygons of no area left out; the images without a label file (backgrounds, or a label
    file of another name)."""

    coco: dict[str, Any]
    repeated_lines: int
    no_area: int
    unlabelled: list[Path]


def yolo_to_coco(images: Sequence[Path], img_dir: Path, class_names: Sequence[str], *,
                 keypoints: int | None = None) -> Conversion:
    """The COCO dict of `images` and their label files, `file_name`s relative to `img_dir`;
    a line repeating an earlier one's numbers counts once (as Ultralytics reads it).
    `keypoints`: a pose dataset's numbers of keypoint values per line (its box only kept).

    Raises:
        DatasetError: naming each image or label line that cannot be converted, or the label
            folder where no image has a label file (nothing is returned then).
    """
    if not images:
        raise DatasetError("the split has no images")
    problems: list[str] = []
    named_by: dict[str, Path] = {}
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    repeated = labelled = no_area = 0
    unlabelled: list[Path] = []
    for image in images:
        try:
            size = image_size(image)
            if size is None:
                raise Problem(f"{image}: missing or not an image")
            height, width = size
            labels = label_file(image)
            numbered: dict[Any, tuple[str, int]] = {}  # a line's numbers -> its first, line n
            if not labels.is_file():
                unlabelled.append(image)
            else:
                labelled += 1
                lines = read_user_text(labels, "label file").splitlines()
                texts = [line.strip() for line in lines if line.strip()]
                for n, line in enumerate(lines, start=1):
                    if line.strip():
                        numbered.setdefault(_line_key(line), (line.strip(), n))
                repeated += len(texts) - len(numbered)
            objects = [_object(line, f"{labels} line {n}", len(class_names), height, width,
                               keypoints) for line, n in numbered.values()]
            file_name = relative_image(image, img_dir, labels, named_by)
        except Problem as problem:
            problems.append(str(problem))
            continue
        image_id = len(coco_images) + 1
        coco_images.append({"id": image_id, "file_name": file_name, "height": height,
                            "width": width})
        for cls, box, polygon in objects:
            annotation = {"id": len(annotations) + 1, "image_id": image_id,
                          "category_id": cls + 1, "bbox": box, "area": box[2] * box[3],
                          "iscrowd": 0}
            if polygon is not None:
                annotation["segmentation"] = [polygon]
                rle = mask_utils.frPyObjects([polygon], height, width)
                annotation["area"] = float(mask_utils.area(mask_utils.merge(rle)))
                if annotation["area"] == 0:  # (points on a line: an empty mask to learn)
                    no_area += 1
                    continue
            annotations.append(annotation)
    raise_problems(problems, "the YOLO labels")
    if not labelled:
        raise DatasetError(f"none of the {len(images)} images has a label file: {images[0]}'s "
                           f"would be {label_file(images[0])} (a folder named labels beside "
                           f"images)")
    categories = coco_categories({name: k + 1 for k, name in enumerate(class_names)})
    return Conversion({"images": coco_images, "annotations": annotations,
                       "categories": categories}, repeated, no_area, unlabelled)


def unmatched_labels(images: Sequence[Path]) -> list[Path]:
    """The label files in the label folders of `images` (every split's: splits listed in text
    files share one) that are none of theirs: an image renamed, of another case, or of a
    suffix that is no image's."""
    theirs = {absolute(label_file(image)) for image in images}
    folders = {path.parent for path in theirs if path.parent.is_dir()}
    return sorted(path for folder in folders for path in folder.iterdir()
                  if path.suffix.lower() == ".txt" and path not in theirs  # (a.TXT: a.jpg's?)
                  and path.name != "classes.txt")
