"""Convert an Ultralytics YOLO dataset (data.yaml, images/, labels/: CVAT's, Roboflow's and Label
Studio's YOLO exports) to COCO-format JSON files for tools/train.py and the others.

Usage:
  python tools/yolo_to_coco.py dataset/data.yaml --output-dir dataset/coco
      [--splits train val]

Writes OUTPUT_DIR/<split>.json for each split the YAML names (train, val and test where
present; --splits picks). Boxes (`class cx cy w h`) become COCO boxes in pixels; polygons
(YOLO's segmentation labels) become each object's `segmentation` too, so Mask R-CNN trains on
them. Class k of `names` is category id k + 1, the same in every file. File names are
relative to the dataset's folder (its `path`), which the tool prints as the `img_dir` to use.
Nothing is written when an image or a label line has a problem: each is named.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.detection.data.yolo import (read_data_yaml, split_images,  # noqa: E402
                                               yolo_to_coco)
from resnet_detect.engine.cli import run_tool  # noqa: E402
from resnet_detect.engine.data import DatasetError  # noqa: E402
from resnet_detect.engine.files import atomic_write_json, writable_folder  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_yaml", help="the dataset's YAML (path, train, val, names)")
    parser.add_argument("--output-dir", required=True, help="folder for <split>.json")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="the YAML's splits to convert (default: train, val, test present)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """Convert; returns {split: COCO dict written}."""
    args = parse_args(argv)
    data_yaml = Path(args.data_yaml)
    out = writable_folder(args.output_dir, "--output-dir")
    root, data, class_names = read_data_yaml(data_yaml)
    splits = args.splits or [s for s in ("train", "val", "test") if data.get(s)]
    if not splits:
        raise DatasetError(f"{data_yaml}: names none of the splits train, val, test")
    images = {split: split_images(root, data, split, data_yaml) for split in splits}
    every = [os.path.abspath(p) for split in splits for p in images[split]]
    img_dir = Path(os.path.commonpath([os.path.abspath(root)] + [os.path.dirname(p)
                                                                 for p in every]))
    converted = {split: yolo_to_coco(images[split], img_dir, class_names) for split in splits}
    out.mkdir(parents=True, exist_ok=True)
    for split, coco in converted.items():
        path = out / f"{split}.json"
        atomic_write_json(coco, path)
        with_masks = sum("segmentation" in a for a in coco["annotations"])
        print(f"{path}: {len(coco['images'])} images, {len(coco['annotations'])} objects "
              f"({with_masks} with polygons)")
    print(f"{len(class_names)} categories: " + ", ".join(class_names))
    print(f"use: data.train.ann_file={out / f'{splits[0]}.json'} data.train.img_dir={img_dir}"
          "  (and data.val.* with the other file)")
    return converted


if __name__ == "__main__":
    run_tool(main)
