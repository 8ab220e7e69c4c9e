"""Dense scenes on the CPU: the RPN's anchor matching and Mask R-CNN's mask targets, each the
way it is done now against the whole-at-once way it replaced, in fresh processes (peak
resident memory is per process).

- matching: M gt boxes against R50-FPN's anchors of an 800x1333 image (267k), one thread:
  `Matcher.match_boxes` (blocks of gt rows) against `Matcher(box_iou(gt, anchors))`.
- masks: a 640x640 image of 1024 polygon objects, resized (short side 480 or 800) and maybe
  flipped: `DetectionDataset` (each object's mask on its own) against albumentations moving
  every object's full-size mask through the transform; and with data.train.mask_format=polygon
  (the polygons moved, then 128 RoIs' 28x28 targets rasterised: one image's mask RoIs).

Usage:
  python benchmarks/dense_scenes.py [--boxes 1000] [--objects 1024]
"""
from __future__ import annotations

import argparse
import atexit
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def matching(way: str, boxes: int) -> float:
    import torch
    from torchvision.ops import box_iou

    from resnet_detect.detection.matcher import Matcher
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(267_000, 2, generator=g) * 1200
    anchors = torch.cat([xy, xy + 32], dim=1)
    xy = torch.rand(boxes, 2, generator=g) * 1200
    gt = torch.cat([xy, xy + 20], dim=1)
    matcher = Matcher(low_threshold=0.3, high_threshold=0.7, allow_low_quality_matches=True)
    start = time.perf_counter()
    matcher.match_boxes(gt, anchors) if way == "blocks" else matcher(box_iou(gt, anchors))
    return time.perf_counter() - start


def masks(way: str, objects: int) -> float:
    import cv2
    import numpy as np

    from resnet_detect.detection.data import DetectionDataset, build_transforms
    from resnet_detect.engine.data import load_coco_json, read_image, segmentation_to_mask
    folder = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    cv2.imwrite(str(folder / "a.png"), np.full((640, 640, 3), 90, dtype=np.uint8))
    side = int(np.ceil(np.sqrt(objects)))
    anns = []
    for j in range(objects):
        x, y = (j % side) * (640 // side) + 2, (j // side) * (640 // side) + 2
        anns.append({"id": j + 1, "image_id": 1, "category_id": 1, "bbox": [x, y, 12, 12],
                     "area": 144, "iscrowd": 0,
                     "segmentation": [[x, y, x + 12, y + 1, x + 11, y + 12, x + 1, y + 11]]})
    (folder / "a.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 640, "width": 640}],
        "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}), encoding="utf-8")
    records, _, _ = load_coco_json(folder / "a.json", folder, keep_segmentation=True)
    transform = build_transforms(min_size=[480, 800], max_size=1333, flip_prob=0.5)
    dataset = DetectionDataset(records, with_masks=True, transform=transform,
                               mask_format="polygon" if way == "polygon" else "bitmask")
    start = time.perf_counter()
    for seed in range(4):
        if way == "each":
            dataset[(0, seed)]["gt_masks"]
        elif way == "polygon":
            sample = dataset[(0, seed)]
            sample["gt_masks"].rasterize_within(sample["gt_boxes"][:128].numpy(),
                                                np.arange(128), 28)
        else:
            record = records[0]
            transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            out = transform(image=read_image(record["file_name"]), bboxes=record["boxes"],
                            box_ids=np.arange(objects),
                            masks=[segmentation_to_mask(s, 640, 640)
                                   for s in record["segmentations"]])
            np.stack(out["masks"])
    return (time.perf_counter() - start) / 4


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--objects", type=int, default=1024)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, way = args.child
        seconds = (matching(way, args.boxes) if kind == "matching"
                   else masks(way, args.objects))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"seconds": seconds, "peak_mb": peak}))
        return
    rows = [("matching", "whole", f"{args.boxes} boxes x 267k anchors, one IoU matrix"),
            ("matching", "blocks", f"{args.boxes} boxes x 267k anchors, blocks of gt rows"),
            ("masks", "stacked", f"{args.objects} objects, full-size masks through the transform"),
            ("masks", "each", f"{args.objects} objects, each mask resized and flipped alone"),
            ("masks", "polygon", f"{args.objects} objects' polygons moved, 128 RoI targets "
                                 f"rasterised (data.train.mask_format=polygon)")]
    print("| what | how | seconds | peak RSS (MB) |\n|---|---|---|---|")
    for kind, way, text in rows:
        out = subprocess.run([sys.executable, __file__, "--boxes", str(args.boxes),
                              "--objects", str(args.objects), "--child", kind, way],
                             capture_output=True, text=True, check=True, cwd=ROOT,
                             env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                  "PATH": "/usr/bin:/bin"})
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {kind} | {text} | {result['seconds']:.2f} | {result['peak_mb']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
