"""Convert Pascal VOC XML annotations to one COCO-format JSON for tools/train.py and the others
(what mmdetection's tools/dataset_converters/pascal_voc.py does, with the boxes read as
detectron2 reads VOC's: mmdetection's converter makes each a pixel narrower and shorter;
resnet_detect/detection/data/voc.py says how).

Usage:
  python tools/voc_to_coco.py VOCdevkit/VOC2007 --split trainval --output voc07_trainval.json
  python tools/voc_to_coco.py VOCdevkit/VOC2007 VOCdevkit/VOC2012 --split trainval \\
      --output voc0712_trainval.json                # both years, img_dir VOCdevkit
  python tools/voc_to_coco.py VOCdevkit/VOC2007 --split test --output voc07_test.json \\
      --classes-from voc0712_trainval.json          # the training file's categories
  python tools/voc_to_coco.py labels/ --output train.json   # XMLs beside their images (LabelImg)

A ROOT is a VOC devkit year folder (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt;
without --split every XML of Annotations/) or any folder whose XML files lie beside their images.
--images names the images' folder where the XMLs lie elsewhere (LabelImg's separate save
folder). Categories are 1..K: VOC's 20 classes in their usual (alphabetical) order where the
names are VOC's and more than half of them, else the names found, sorted; --classes or
--classes-from fix them, so that a training and a validation file agree (training refuses
files whose categories differ). Boxes are VOC's 1-based pixel indices (detectron2's reading);
--zero-based takes them as pixel edges (CVAT's VOC export writes x and x + w).
`difficult` objects are crowd regions (ignored in training and scoring) unless
--keep-difficult. Image file names are relative to --img-dir (default: ROOT, or the folder
that holds all ROOTs); the tool ends by printing the config keys to use. Nothing is written
when an XML file, an object or an image has a problem: each is named.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.detection.data.conversion import (add_class_options,  # noqa: E402
                                                     chosen_classes, images_folder,
                                                     refuse_output_among, write_coco)
from resnet_detect.detection.data.voc import annotation_files, voc_to_coco  # noqa: E402
from resnet_detect.engine.cli import program_name, run_tool  # noqa: E402
from resnet_detect.engine.data import listing  # noqa: E402
from resnet_detect.engine.files import writable_file  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name(), description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", metavar="ROOT",
                        help="VOC devkit year folders, or folders of XML files beside images")
    parser.add_argument("--output", required=True, help="the COCO JSON file to write")
    parser.add_argument("--split", default=None,
                        help="ImageSets/Main/<split>.txt of each devkit folder (default: all)")
    parser.add_argument("--img-dir", default=None,
                        help="folder the file names are relative to (default: ROOT, or the "
                             "folder holding all ROOTs)")
    add_class_options(parser)
    parser.add_argument("--keep-difficult", action="store_true",
                        help="difficult objects as ordinary ones (default: crowd regions)")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="the images' folder where it is not the devkit's JPEGImages/ or "
                             "the XMLs' own (LabelImg's separate save folder)")
    parser.add_argument("--zero-based", action="store_true",
                        help="boxes written as pixel edges (CVAT's / Datumaro's VOC export), "
                             "not VOC's 1-based pixel indices: no - 1")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Convert; returns the COCO dict written."""
    args = parse_args(argv)
    writable_file(args.output, "--output")  # before the inputs are read
    roots = [Path(r) for r in args.roots]
    if args.img_dir is not None:
        img_dir = Path(args.img_dir)
    elif len(roots) == 1:
        img_dir = roots[0]
    else:
        img_dir = Path(os.path.commonpath([os.path.abspath(r) for r in roots]))
    class_names, category_ids = chosen_classes(args)
    images = images_folder(args)
    if images is not None and args.img_dir is None:
        img_dir = images
    entries = [e for root in roots for e in annotation_files(root, args.split, images)]
    refuse_output_among(args.output, [e.xml for e in entries], "one of the XML files read")
    coco, fractional, at_zero, beyond, other_filename = voc_to_coco(
        entries, img_dir, class_names, keep_difficult=args.keep_difficult,
        category_ids=category_ids, zero_based=args.zero_based)
    crowd = sum(a["iscrowd"] for a in coco["annotations"])
    write_coco(coco, args.output, img_dir, f"{len(coco['images'])} images, "
               f"{len(coco['annotations'])} objects ({crowd} difficult as crowd regions)")
    if fractional and not args.zero_based:
        print(f"note: {fractional} boxes have coordinates that are not whole numbers, where "
              f"VOC's are 1-based pixel indices: an export of pixel edges (CVAT's) is read "
              f"with --zero-based")
    elif at_zero and not args.zero_based:
        print(f"note: {at_zero} boxes start at 0, where VOC's 1-based pixel indices start at "
              f"1 (each was clipped there): a 0-based export is read with --zero-based")
    if beyond:
        print(f"note: {beyond} boxes reach past their image: clipped to it")
    if other_filename:
        print(f"note: {len(other_filename)} XML files name another image in <filename> than "
              f"the one named as they are (copied from another?): each was read with the image "
              f"of its own name, as detectron2's and mmdetection's readers do:"
              + listing(other_filename))
    return coco


if __name__ == "__main__":
    run_tool(main)
