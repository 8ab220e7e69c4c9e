"""Convert an Ultralytics YOLO dataset (data.yaml, images/, labels/: CVAT's and Roboflow's YOLO
exports; Label Studio's classes.txt + images/ + labels/) to COCO-format JSON files for
tools/train.py and the others.

Usage:
  python tools/yolo_to_coco.py dataset/data.yaml --output-dir dataset/coco
      [--splits train val]
  python tools/yolo_to_coco.py label_studio_export/ --output-dir coco   # one split, train

Writes OUTPUT_DIR/<split>.json for each split the YAML names (train, val and test where
present, an empty val or test folder left out; --splits picks). Boxes (`class cx cy w h`)
become COCO boxes in pixels; polygons (YOLO's segmentation labels) become each object's
`segmentation` too, so Mask R-CNN trains on them; a pose dataset's (kpt_shape) lines give their
boxes. Coordinates up to 0.01 outside 0..1 are clipped (Ultralytics' tolerance), a repeated
label line counts once, a polygon of no area is left out; the images without a label file
(no objects) are counted, and the label files that are no image's named. Class k of `names`
is category id k + 1, the same in every file. File
names are relative to the dataset's folder (its `path`), which the tool prints as the `img_dir`
to use. Nothing is written when an image or a label line has a problem: each image's, and the
first bad line of each label file, are named.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.detection.data.conversion import absolute, save_coco  # noqa: E402
from resnet_detect.detection.data.yolo import (label_file, read_dataset,  # noqa: E402
                                               split_exists, split_images, unmatched_labels,
                                               yolo_to_coco)
from resnet_detect.engine.cli import program_name, run_tool  # noqa: E402
from resnet_detect.engine.data import DatasetError  # noqa: E402
from resnet_detect.engine.files import writable_folder  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name(), description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_yaml", metavar="DATASET",
                        help="the dataset's YAML (path, train, val, names), or its folder")
    parser.add_argument("--output-dir", required=True, help="folder for <split>.json")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="the YAML's splits to convert (default: train, val, test present)")
    return parser.parse_args(argv)


def _report_unmatched_labels(source: Path, root: Path, data: dict, images: dict[str, list[Path]],
                             converted: dict) -> None:
    """Label files that no image of the dataset's splits has: Ultralytics leaves them out
    without a word, their images (B.JPG for b.txt, a renamed or a .heic one) trained as
    images without objects."""
    every = [p for split in ("train", "val", "test") if split_exists(root, data, split)
             for p in (images.get(split) or split_images(root, data, split, source,
                                                          empty_ok=True))]
    unmatched = unmatched_labels(every)
    if not unmatched:
        return
    unlabelled = {str(absolute(label_file(p))).casefold(): p for c in converted.values()
                  for p in c.unlabelled}
    shown = []
    for path in unmatched[:5]:
        image = unlabelled.get(str(path).casefold())  # (B.JPG's label file is B.txt)
        shown.append(f"{path}" if image is None else f"{path} (the label file of {image} is "
                     f"{label_file(image).name}: the case differs)")
    print(f"{source}: {len(unmatched)} label files are no image's, left out: "
          + "; ".join(shown) + ("; ..." if len(unmatched) > 5 else ""))


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """Convert; returns {split: COCO dict written}."""
    args = parse_args(argv)
    source = Path(args.data_yaml)
    out = writable_folder(args.output_dir, "--output-dir")
    root, data, class_names = read_dataset(source)
    splits = args.splits or [s for s in ("train", "val", "test") if data.get(s)]
    if not splits:
        raise DatasetError(f"{source}: names none of the splits train, val, test")
    if not args.splits:  # a split the YAML names but the export left out (Roboflow's test)
        absent = [s for s in splits if not split_exists(root, data, s)]
        for split in absent:
            print(f"{source}: its {split} split is not there: left out")
        splits = [s for s in splits if s not in absent]
        if not splits:
            raise DatasetError(f"{source}: none of its splits is there ({', '.join(absent)}): "
                               f"its paths are taken from its 'path' ({root})")
    # an export's empty val or test folder is left out by default; an empty train one is
    # more likely a wrong path, and named
    images = {split: split_images(root, data, split, source,
                                  empty_ok=not args.splits and split != "train")
              for split in splits}
    for split in [s for s in splits if not images[s]]:
        print(f"{source}: its {split} split ({data[split]}) has no images: left out")
    splits = [s for s in splits if images[s]]
    if not splits:
        raise DatasetError(f"{source}: none of its splits has images ({', '.join(images)})")
    every = [os.path.abspath(p) for split in splits for p in images[split]]
    img_dir = Path(os.path.commonpath([os.path.abspath(root)] + [os.path.dirname(p)
                                                                 for p in every]))
    # (read_dataset checked it: [keypoints, 2 or 3])
    keypoints = (data["kpt_shape"][0] * data["kpt_shape"][1]
                 if data.get("kpt_shape") is not None else None)
    converted = {split: yolo_to_coco(images[split], img_dir, class_names, keypoints=keypoints)
                 for split in splits}
    out.mkdir(parents=True, exist_ok=True)
    for split, (coco, repeated, no_area, unlabelled) in converted.items():
        path = out / f"{split}.json"
        save_coco(coco, path)
        with_masks = sum("segmentation" in a for a in coco["annotations"])
        left_out = [f"{n} {what} left out" for n, what in (
            (repeated, "repeated label lines"), (no_area, "polygons of no area")) if n]
        print(f"{path}: {len(coco['images'])} images ({len(unlabelled)} without a label file: "
              f"no objects, as Ultralytics counts them), {len(coco['annotations'])} objects "
              f"({'; '.join([f'{with_masks} with polygons', *left_out])})")
    _report_unmatched_labels(source, root, data, images, converted)
    if keypoints:
        print("a pose dataset (kpt_shape): each object's box only, its keypoints left out")
    print(f"{len(class_names)} categories: " + ", ".join(class_names))
    keys = [f"data.{s}.ann_file={out / f'{s}.json'} data.{s}.img_dir={img_dir}"
            for s in splits if s in ("train", "val")]
    print("use: " + (" ".join(keys) if keys else
                     f"data.val.ann_file={out / f'{splits[0]}.json'} data.val.img_dir={img_dir}"))
    return {split: conversion.coco for split, conversion in converted.items()}


if __name__ == "__main__":
    run_tool(main)
