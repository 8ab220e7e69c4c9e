"""What the converters to COCO (tools/voc_to_coco.py, tools/labelme_to_coco.py) share on their
command lines: the categories to use, and writing the file."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from resnet_detect.engine.data import DatasetError, read_coco_json
from resnet_detect.engine.files import atomic_write_json


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
    categories = sorted(read_coco_json(args.classes_from)["categories"], key=lambda c: c["id"])
    return [c["name"] for c in categories], [c["id"] for c in categories]


def write_coco(coco: dict[str, Any], output: str | Path) -> None:
    try:
        atomic_write_json(coco, output)
    except OSError as err:
        raise DatasetError(f"{output}: cannot be written ({err})") from None
