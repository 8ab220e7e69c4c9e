"""Merge several COCO files, each with its image folder, into one that every tool reads (as
detectron2 trains on several DATASETS.TRAIN and mmdetection on a ConcatDataset: VOC07+12,
COCO with one's own images, a dataset labelled in parts).

Usage:
  python tools/merge_coco.py --input voc07/train.json datasets/VOC2007/JPEGImages \
      --input voc12/train.json datasets/VOC2012/JPEGImages --output voc0712.json
  python tools/merge_coco.py --input a.json photos/ --input b.json photos/ --output ab.json

Categories are matched by name (the first file's ids, then new names with the next ids;
--classes or --classes-from fix them); images and annotations are numbered anew; an image
that several files name is one image with all their objects (an object an earlier file gives
already, the same class, box and mask to a thousandth of a pixel, once; one boxed almost as an
earlier file's is kept and warned of). File names become relative to
--img-dir (default: the folder holding every image folder); the tool ends by printing the
config keys to use. Nothing is written when a file has a problem: each is named
(resnet_detect/detection/data/merging.py).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.detection.data.conversion import (add_class_options,  # noqa: E402
                                                     chosen_classes, write_coco)
from resnet_detect.detection.data.merging import merge_coco  # noqa: E402
from resnet_detect.engine.cli import program_name, run_tool  # noqa: E402
from resnet_detect.engine.files import writable_file  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name(), description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs=2, action="append", required=True,
                        metavar=("JSON", "IMG_DIR"),
                        help="a COCO file and the folder its file names are relative to "
                             "(repeat for each file)")
    parser.add_argument("--output", required=True, help="the COCO JSON file to write")
    parser.add_argument("--img-dir", default=None,
                        help="folder the file names are relative to (default: the folder "
                             "holding every IMG_DIR)")
    add_class_options(parser)
    args = parser.parse_args(argv)
    for json_file, _ in args.input:  # the merge would replace an input it read
        if Path(json_file).resolve() == Path(args.output).resolve():
            parser.error(f"--output {args.output} is one of the --input files: write the merge "
                         f"to another file")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Merge; returns the COCO dict written."""
    args = parse_args(argv)
    writable_file(args.output, "--output")  # before the inputs are read
    class_names, category_ids = chosen_classes(args)
    merged = merge_coco(args.input, args.img_dir, class_names, category_ids)
    coco = merged.coco
    crowd = sum(bool(a.get("iscrowd", 0)) for a in coco["annotations"])
    joined = []
    if merged.shared:
        joined.append(f"{merged.shared} image(s) named by several files, their objects joined")
    if merged.repeated:
        joined.append(f"{merged.repeated} objects an earlier file gives too left out")
    write_coco(coco, args.output, merged.img_dir,
               f"{len(coco['images'])} images, {len(coco['annotations']) - crowd} objects, "
               f"{crowd} crowd regions from {len(args.input)} files"
               + (f" ({'; '.join(joined)})" if joined else ""))
    return coco


if __name__ == "__main__":
    run_tool(main)
