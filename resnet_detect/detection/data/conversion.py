"""What the converters to COCO (voc, yolo, labelme and their tools) share: problems named per
entry, images named once under the image folder, the categories, writing the file."""
from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resnet_detect.engine.data import DatasetError, listing, read_coco_json
from resnet_detect.engine.data.coco import alike_names
from resnet_detect.engine.files import atomic_write_json

logger = logging.getLogger(__name__)


class Problem(Exception):
    """An entry (a file, a line, an object) that cannot be converted; the message names it."""


def raise_problems(problems: list[str], what: str) -> None:
    """DatasetError listing `problems` (of `what`: "the VOC annotations"), if any."""
    if problems:
        raise DatasetError(f"{len(problems)} problems in {what}:{listing(problems)}")


def absolute(path: str | os.PathLike) -> Path:
    """`path` made absolute and normalised, its symlinks kept (one file named as ./a.jpg and
    /d/a.jpg compares equal)."""
    return Path(os.path.abspath(path))


def relative_image(image: Path, img_dir: Path, source: Path, named_by: dict[str, Path]) -> str:
    """`image`'s file_name under `img_dir` (POSIX), recorded in `named_by` as `source`'s.

    Raises:
        Problem: the image is not under `img_dir`, or another source named it.
    """
    try:
        relative = os.path.relpath(os.path.abspath(image), os.path.abspath(img_dir))
    except ValueError:  # another drive (Windows)
        relative = ".."
    if relative == ".." or relative.startswith(".." + os.sep):
        try:  # (labelme's layout of annotations/ beside images/: "..\\images\\a.jpg")
            both = os.path.commonpath([os.path.abspath(image), os.path.abspath(img_dir)])
            above = f" (--img-dir {both}: a folder above both)"
        except ValueError:  # another drive (Windows)
            above = ""
        raise Problem(f"{image}: not under the image folder {img_dir}{above}")
    relative = Path(relative).as_posix()
    if relative in named_by:
        raise Problem(f"{source}: its image {image} is also {named_by[relative]}'s (an item "
                      f"listed twice?)")
    named_by[relative] = source
    return relative


def warn_of_twin_spellings(class_names: Sequence[str], found: Mapping[str, int],
                           first_in: Mapping[str, str] | None = None) -> None:
    """Classes whose names differ only in case or spaces ('Dog' in one tool's files, 'dog '
    in another's), named with their object counts (`found`) and the file each is first in."""
    for group in alike_names(class_names):
        names = [class_names[k] for k in group]
        logger.warning("classes whose names differ only in case or spaces: %s: they are %d "
                       "classes (rename the labels to have one)",
                       ", ".join(f"{n!r} ({found.get(n, 0)} objects"
                                 + (f", first in {first_in[n]}" if first_in and n in first_in
                                    else "") + ")" for n in names), len(names))


def ids_of_classes(found: Counter[str], class_names: Sequence[str],
                 ids: Sequence[int] | None, problems: list[str],
                 first_in: Mapping[str, str] | None = None) -> dict[str, int]:
    """{name: category id} of `class_names` (ids `ids`, default 1..K); names `found` on
    objects outside them are added to `problems`, each with `first_in[name]` (the file an
    object of it is first found in: a typo in one of thousands of files)."""
    repeated = sorted(n for n, c in Counter(class_names).items() if c > 1)
    if repeated:
        raise DatasetError(f"class names given twice: {repeated}")
    warn_of_twin_spellings(class_names, found, first_in)
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        problems.append("names not among the classes: " + ", ".join(
            f"{n!r} ({found[n]} objects" + (f", first in {first_in[n]}" if first_in else "")
            + ")" for n in unknown))
    return dict(zip(class_names, ids if ids is not None else range(1, len(class_names) + 1)))


def coco_categories(category_id: dict[str, int]) -> list[dict[str, Any]]:
    """The `categories` a converter writes, from {name: id}."""
    return [{"id": i, "name": n, "supercategory": "none"} for n, i in category_id.items()]


def add_class_options(parser: argparse.ArgumentParser) -> None:
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                         help="the categories, in order (ids 1..K)")
    classes.add_argument("--classes-from", default=None, metavar="JSON",
                         help="take the categories (ids and names) of this COCO file (the "
                              "training file's, for a validation file)")


def chosen_classes(args: argparse.Namespace) -> tuple[list[str] | None, list[int] | None]:
    """(class names, category ids) the options give; None where the data decides."""
    if args.classes_from is None:
        return args.classes, None
    refuse_output_among(args.output, [args.classes_from], "the --classes-from file")
    categories = sorted(read_coco_json(args.classes_from)["categories"], key=lambda c: c["id"])
    return [c["name"] for c in categories], [c["id"] for c in categories]


def refuse_output_among(output: str | Path, read: Sequence[str | Path], what: str) -> None:
    """A DatasetError where `output` is one of the files `read` (`what` names them: "the
    --classes-from file"): writing it would replace a file the conversion reads."""
    target = Path(output).resolve()
    for path in read:
        if Path(path).resolve() == target:
            raise DatasetError(f"--output {output} is {what}: the COCO file would replace "
                               f"it; write it to another file")


def images_folder(args: argparse.Namespace) -> Path | None:
    """--images, checked to be a folder; None where it is not given."""
    if args.images is None:
        return None
    if not Path(args.images).is_dir():
        raise DatasetError(f"--images {args.images}: not a folder")
    return Path(args.images)


def save_coco(coco: dict[str, Any], output: str | Path) -> None:
    """Write a converted file; a DatasetError naming it where it cannot be written."""
    try:
        atomic_write_json(coco, output)
    except OSError as err:
        raise DatasetError(f"{output}: cannot be written ({err})") from None


def write_coco(coco: dict[str, Any], output: str | Path, img_dir: Path, summary: str) -> None:
    """Write the file, then print `summary` and the config keys that read it.

    Raises:
        DatasetError: no category (training refuses such a file; nothing written).
    """
    if not coco["categories"]:
        raise DatasetError(f"no object with a class was found ({summary}): a file of 0 "
                           f"categories would be refused by training; {output} not written "
                           f"(--classes names the classes of files without objects)")
    save_coco(coco, output)
    print(f"{output}: {summary}, {len(coco['categories'])} categories: "
          + ", ".join(c["name"] for c in coco["categories"]))
    print(f"use: data.train.ann_file={output} data.train.img_dir={img_dir}  (or data.val.*)")
