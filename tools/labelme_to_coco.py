"""Convert LabelMe JSON annotations (one file per image) to one COCO-format JSON with instance
masks, for tools/train.py (Mask R-CNN too) and the others (labelme's own labelme2coco example
reads them the same way: resnet_detect/detection/data/labelme.py says how).

Usage:
  python tools/labelme_to_coco.py labelled/train --output train.json
  python tools/labelme_to_coco.py labelled/val --output val.json --classes-from train.json
  python tools/labelme_to_coco.py annotations/ --images photos/ --output train.json

Every .json under ROOT (but --output) is a labelme file; its image is the file its imagePath
names, beside it or in --images (in the sub folder the file has under ROOT, or at its
top), else at that path (without an imagePath, the image of the
file's name: pic.jpg for pic.json). Categories are 1..K, the labels found,
sorted (`__ignore__` marks crowd regions, no category); --classes or --classes-from fix them,
so that a training and a validation file agree (training refuses files whose categories
differ). Polygons, rectangles, circles, labelme's masks and X-AnyLabeling's rotated boxes are
objects (shapes of one group_id and label: one object); points, lines, shapes of no area and
COCO files among them are left out and counted; images kept only inside their JSON file
(imageData) are written into --images (in the file's sub folder there; else beside it) with
--write-embedded, and removed
again if the conversion fails. File names are relative to
--img-dir (default: --images, else ROOT); the tool ends by printing the config keys to use.
Nothing is written when a file, a shape or an image has a problem: each is named.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.detection.data.conversion import (add_class_options,  # noqa: E402
                                                     chosen_classes, images_folder,
                                                     write_coco)
from resnet_detect.detection.data.labelme import labelme_files, labelme_to_coco  # noqa: E402
from resnet_detect.engine.cli import program_name, run_tool  # noqa: E402
from resnet_detect.engine.files import writable_file  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name(), description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", metavar="ROOT", help="folder of labelme .json files")
    parser.add_argument("--output", required=True, help="the COCO JSON file to write")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="the images' folder where they are not beside the JSON files")
    parser.add_argument("--img-dir", default=None,
                        help="folder the file names are relative to (default: --images, "
                             "else ROOT)")
    add_class_options(parser)
    parser.add_argument("--write-embedded", action="store_true",
                        help="write images found only inside their JSON file (imageData) "
                             "into --images, else beside it")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Convert; returns the COCO dict written."""
    args = parse_args(argv)
    writable_file(args.output, "--output")  # before the inputs are read
    images = images_folder(args)
    img_dir = Path(args.img_dir or images or args.root)
    class_names, category_ids = chosen_classes(args)
    coco, left_out, no_area, other, beyond = labelme_to_coco(
        labelme_files(Path(args.root), Path(args.output)), img_dir, class_names, images=images,
        category_ids=category_ids, write_embedded=args.write_embedded, root=Path(args.root))
    crowd = sum(a["iscrowd"] for a in coco["annotations"])
    aside = [f"{n} {what}" for n, what in [(left_out, "points and lines"),
                                           (no_area, "shapes of no area"),
                                           (other, "JSON files of another kind")] if n]
    write_coco(coco, args.output, img_dir,
               f"{len(coco['images'])} images, {len(coco['annotations']) - crowd} objects, "
               f"{crowd} crowd regions (__ignore__: one per category; difficult)"
               + (f", left out: {', '.join(aside)}" if aside else ""))
    if beyond:
        print(f"note: {beyond} objects reach past their image: their boxes clipped to it")
    return coco


if __name__ == "__main__":
    run_tool(main)
