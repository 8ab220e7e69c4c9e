"""Host time and memory of COCO-scale annotation files: loading them for training and scoring
detections against them (no model runs).

Usage: python benchmarks/coco_scale.py --data DIR [--code REPO] [--train-images 118287]
           [--val-images 5000] [--phases load_boxes load_masks eval_pycocotools eval_faster]

Writes, once, a COCO-sized fake dataset under DIR: train2017-like (118,287 images, about 7
objects each, 8-30 point polygons, 1 % crowd objects as uncompressed RLE, COCO's 80 category
ids) and val2017-like (5,000 images); the image files are hardlinks to 300 real JPEGs, so the
folder costs about 10 MB besides the JSONs. Then each phase runs in a fresh process importing
the project from REPO (default: this checkout; a worktree of another commit compares two
versions, from 7fc034a on: the package resnet_detect) and prints its wall time, with one
full garbage collection after the call, and its peak RSS:
  - load_boxes / load_masks: `engine.data.load_coco_json` of the train file, as Faster R-CNN /
    Mask R-CNN training does (with the file checks);
  - eval_pycocotools / eval_faster: `detection.evaluation.evaluate_coco` (bbox) of 100
    detections per val image (every object, its box moved by a few pixels, and random boxes)
    with each backend: the same AP from both.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
SIZES = [(480, 640), (640, 480), (427, 640), (375, 500), (640, 427), (512, 512)]  # (h, w)
PHASES = ("load_boxes", "load_masks", "eval_pycocotools", "eval_faster")


def _annotation(rng: np.random.Generator, ann_id: int, image_id: int, h: int, w: int) -> dict:
    bw, bh = rng.uniform(4, w * 0.6), rng.uniform(4, h * 0.6)
    x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    crowd = bool(rng.random() < 0.01)
    if crowd:  # a box-shaped region as uncompressed RLE (column-major run lengths)
        mask = np.zeros((h, w), np.uint8)
        mask[int(y):int(y + bh), int(x):int(x + bw)] = 1
        flat = mask.flatten(order="F")
        edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
        counts = ([0] if flat[0] else []) + np.diff(edges).tolist()
        segmentation = {"size": [h, w], "counts": counts}
    else:
        n = int(rng.integers(8, 31))
        angle, radius = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(0.6, 1.0, n)
        points = np.stack([x + bw / 2 * (1 + radius * np.cos(angle)),
                           y + bh / 2 * (1 + radius * np.sin(angle))], 1)
        segmentation = [np.round(points, 2).reshape(-1).tolist()]
    return {"id": ann_id, "image_id": image_id, "category_id": int(rng.choice(COCO_IDS)),
            "segmentation": segmentation, "area": round(bw * bh * 0.7, 2), "iscrowd": int(crowd),
            "bbox": [round(float(v), 2) for v in (x, y, bw, bh)]}


def make_split(data: Path, name: str, n_images: int, bases: list[tuple[Path, int, int]],
               rng: np.random.Generator) -> None:
    (data / name).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        base, h, w = bases[int(rng.integers(len(bases)))]
        file_name = f"{image_id:012d}.jpg"
        if not (data / name / file_name).exists():
            os.link(base, data / name / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for _ in range(int(rng.integers(0, 15))):
            annotations.append(_annotation(rng, len(annotations) + 1, image_id, h, w))
    categories = [{"id": c, "name": f"class{c}", "supercategory": "x"} for c in COCO_IDS]
    (data / f"instances_{name}.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories},
        separators=(",", ":")), encoding="utf-8")
    print(f"{name}: {len(images)} images, {len(annotations)} objects", flush=True)


def make_data(data: Path, train_images: int, val_images: int) -> None:
    rng = np.random.default_rng(0)
    (data / "base").mkdir(parents=True, exist_ok=True)
    bases = []
    for i in range(300):
        h, w = SIZES[i % len(SIZES)]
        path = data / "base" / f"{i:03d}.jpg"
        small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        cv2.imwrite(str(path), cv2.resize(small, (w, h)))
        bases.append((path, h, w))
    make_split(data, "val2017", val_images, bases, rng)
    make_split(data, "train2017", train_images, bases, rng)
    (data / ".done").write_text(f"{train_images} {val_images}\n", encoding="utf-8")


PHASE_CODE = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
data, phase = sys.argv[2], sys.argv[3]
if phase.startswith("load"):
    from resnet_detect.engine.data import load_coco_json
    start = time.perf_counter()
    records, _, _ = load_coco_json(f"{data}/instances_train2017.json", f"{data}/train2017",
                                   keep_segmentation=phase == "load_masks")
    what = f"{len(records)} records"
else:
    from resnet_detect.detection.evaluation import evaluate_coco
    gt = json.load(open(f"{data}/instances_val2017.json", "rb"))
    rng, ids = np.random.default_rng(0), [c["id"] for c in gt["categories"]]
    objects = {}
    for ann in gt["annotations"]:
        objects.setdefault(ann["image_id"], []).append(ann)
    results = []
    for img in gt["images"]:  # each object found, a little off, then random boxes to 100
        found = [(np.array(a["bbox"]) + rng.normal(0, 2, 4), a["category_id"])
                 for a in objects.get(img["id"], [])]
        size = np.array([img["width"], img["height"]], float)
        xy, wh = rng.uniform(0, 0.7, (100, 2)) * size, rng.uniform(0.02, 0.3, (100, 2)) * size
        found += [(np.concatenate([p, q]), c)
                  for p, q, c in zip(xy, wh, rng.choice(ids, max(100 - len(found), 0)))]
        results += [{"image_id": img["id"], "category_id": int(c), "score": float(s),
                     "bbox": [float(v) for v in box]}
                    for (box, c), s in zip(found, rng.random(len(found)))]
    del gt
    start = time.perf_counter()
    backend = "pycocotools" if phase == "eval_pycocotools" else "faster_coco_eval"
    ap = evaluate_coco(f"{data}/instances_val2017.json", results, backend=backend,
                       verbose=False)["AP"]
    what = f"{len(results)} detections, AP {ap:.3f}"
import gc
gc.collect()  # the full pass a collector paused while loading defers: counted in both versions
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"| {phase} | {seconds:.1f} | {peak:.0f} | {what} |", flush=True)
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder for the fake dataset")
    parser.add_argument("--code", type=Path, default=ROOT, help="repository to import")
    parser.add_argument("--train-images", type=int, default=118287)
    parser.add_argument("--val-images", type=int, default=5000)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    args = parser.parse_args(argv)
    done = args.data / ".done"
    wanted = f"{args.train_images} {args.val_images}\n"
    if not done.is_file() or done.read_text(encoding="utf-8") != wanted:
        make_data(args.data, args.train_images, args.val_images)
    print(f"code: {args.code.resolve()}\n| phase | seconds | peak RSS MiB | |\n|---|---|---|---|",
          flush=True)
    for phase in args.phases:
        subprocess.run([sys.executable, "-c", PHASE_CODE, str(args.code), str(args.data), phase],
                       check=True)


if __name__ == "__main__":
    main()
