"""LVIS's federated AP: ours (both COCO backends) against lvis-api's LVISEval on random sets.

Usage: pip install --no-deps lvis==0.5.3
       python benchmarks/lvis_api_parity.py [--seeds 0 1 2] [--images 80] [--categories 40]
   or, for time and memory at LVIS's scale (lvis-api not needed):
       python benchmarks/lvis_api_parity.py --scale pycocotools|faster_coco_eval
           [--images 5000] [--categories 1203]

lvis-api is not a dependency: its wheel requires opencv-python and matplotlib (for drawing,
which this script does not import) and uses `np.float`, removed in NumPy 1.24, so the script
gives NumPy that alias back. Each random set has images with their negative and
not-exhaustive category lists, polygon masks, jittered detections of the objects and false
positives of any category, 400 of them in a few images (over LVIS's 300 per image), 3 % of
the detections of no area.
Prints, per seed and IoU type, the largest difference between lvis-api's numbers (AP, AP50,
AP75, APs, APm, APl, APr, APc, APf, AR@300) and ours, in percentage points.
--scale fills every image to 300 detections (boxes; the extra ones random) and prints the
seconds and peak RSS of one box evaluation with that backend, and its AP, APr, APc, APf.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
import types
from importlib import util
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from resnet_detect.detection.evaluation import evaluate_coco

# lvis-api's result name -> ours (AR@300 is COCOeval's 9th number, a fraction)
NAMES = {k: k for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")}


def random_lvis(seed: int, images: int = 40, categories: int = 20,
                crowded: tuple[int, ...] = (3, 7),
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A random LVIS-style ground truth (categories r, c, f in turn) and COCO results with
    boxes and RLE masks; the images numbered in `crowded` get 400 false positives."""
    rng = random.Random(seed)
    cats = [{"id": 2 * i + 1, "name": f"c{i}", "frequency": "rcf"[i % 3]}
            for i in range(categories)]
    ids = [c["id"] for c in cats]
    imgs, annotations, results = [], [], []

    def polygon(x: float, y: float, w: float, h: float) -> list[float]:
        return [x, y, x + w, y, x + w * 0.8, y + h, x, y + h * 0.9]

    def detection(img: dict[str, Any], category: int, x: float, y: float, w: float,
                  h: float) -> dict[str, Any]:
        x, y = max(0.0, x), max(0.0, y)
        w, h = min(w, img["width"] - x), min(h, img["height"] - y)
        if rng.random() < 0.03:  # of no area: no box, no mask, as lvis-api reads them
            w = 0.0
        rle = mask_utils.merge(mask_utils.frPyObjects([polygon(x, y, w, h)], img["height"],
                                                      img["width"]))
        return {"image_id": img["id"], "category_id": category, "bbox": [x, y, w, h],
                "score": round(rng.random(), 3),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}

    for i in range(images):
        img = {"id": 5 + 3 * i, "file_name": f"{i}.jpg", "height": rng.randint(150, 400),
               "width": rng.randint(150, 400)}
        present = rng.sample(ids, rng.randint(0, 4))
        img["neg_category_ids"] = rng.sample([c for c in ids if c not in present],
                                             rng.randint(0, 5))
        img["not_exhaustive_category_ids"] = rng.sample(present, min(len(present), 1))
        imgs.append(img)
        for category in present:
            for _ in range(rng.randint(1, 3)):
                w, h = rng.uniform(5, img["width"] / 2), rng.uniform(5, img["height"] / 2)
                x, y = rng.uniform(0, img["width"] - w), rng.uniform(0, img["height"] - h)
                annotations.append({"id": len(annotations) + 1, "image_id": img["id"],
                                    "category_id": category, "bbox": [x, y, w, h],
                                    "area": float(mask_utils.area(mask_utils.merge(
                                        mask_utils.frPyObjects([polygon(x, y, w, h)],
                                                               img["height"], img["width"])))),
                                    "segmentation": [polygon(x, y, w, h)]})
                for _ in range(rng.randint(0, 2)):
                    results.append(detection(img, category, x + rng.gauss(0, w / 10),
                                             y + rng.gauss(0, h / 10), w, h))
        for _ in range(400 if i in crowded else rng.randint(0, 10)):
            w, h = rng.uniform(5, img["width"] / 2), rng.uniform(5, img["height"] / 2)
            results.append(detection(img, rng.choice(ids), rng.uniform(0, img["width"] - w),
                                     rng.uniform(0, img["height"] - h), w, h))
    return {"images": imgs, "annotations": annotations, "categories": cats}, results


def _lvis_api() -> Any:
    """lvis-api's eval module, without its drawing module (matplotlib) and with np.float."""
    spec = util.find_spec("lvis")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("lvis-api is not installed: pip install --no-deps lvis==0.5.3")
    package = types.ModuleType("lvis")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["lvis"] = package
    np.float = float  # type: ignore[attr-defined]  # lvis-api 0.5.3 still uses it
    from lvis import eval as lvis_eval
    return lvis_eval


def scale(backend: str, images: int, categories: int) -> None:
    gt, results = random_lvis(0, images, categories, crowded=())
    rng = random.Random(1)
    counts: dict[int, int] = {}
    for result in results:
        del result["segmentation"]
        counts[result["image_id"]] = counts.get(result["image_id"], 0) + 1
    ids = [c["id"] for c in gt["categories"]]
    for img in gt["images"]:
        for _ in range(300 - counts.get(img["id"], 0)):
            w, h = rng.uniform(5, img["width"] / 2), rng.uniform(5, img["height"] / 2)
            results.append({"image_id": img["id"], "category_id": rng.choice(ids),
                            "bbox": [rng.uniform(0, img["width"] - w),
                                     rng.uniform(0, img["height"] - h), w, h],
                            "score": rng.random()})
    with tempfile.TemporaryDirectory() as folder:
        gt_file = Path(folder) / "lvis.json"
        gt_file.write_text(json.dumps(gt), encoding="utf-8")
        print(f"{len(gt['images'])} images, {len(gt['annotations'])} objects, "
              f"{len(ids)} categories, {len(results)} detections", flush=True)
        start = time.perf_counter()
        m = evaluate_coco(gt_file, results, backend=backend, verbose=False)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{backend}: {seconds:.1f} s, peak RSS {peak:.2f} GB; AP {m['AP']:.3f}, APr "
          f"{m['APr']:.3f}, APc {m['APc']:.3f}, APf {m['APf']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int)
    parser.add_argument("--categories", type=int)
    parser.add_argument("--scale", choices=("pycocotools", "faster_coco_eval"))
    args = parser.parse_args(argv)
    if args.scale:
        scale(args.scale, args.images or 5000, args.categories or 1203)
        return
    args.images, args.categories = args.images or 80, args.categories or 40
    lvis_eval = _lvis_api()
    worst = 0.0
    with tempfile.TemporaryDirectory() as folder:
        gt_file = Path(folder) / "lvis.json"
        for seed in args.seeds:
            gt, results = random_lvis(seed, args.images, args.categories)
            gt_file.write_text(json.dumps(gt), encoding="utf-8")
            for iou_type in ("bbox", "segm"):
                drop = "bbox" if iou_type == "segm" else "segmentation"
                theirs_input = [{k: v for k, v in r.items() if k != drop} for r in results]
                reference = lvis_eval.LVISEval(str(gt_file), theirs_input, iou_type)
                reference.run()
                theirs = reference.get_results()
                for backend in ("pycocotools", "faster_coco_eval"):
                    ours = evaluate_coco(gt_file, results, iou_type=iou_type, backend=backend,
                                         verbose=False)
                    diffs = [abs(100 * theirs[k] - ours[v]) for k, v in NAMES.items()]
                    diffs.append(abs(100 * theirs["AR@300"] - 100 * ours["stats"][8]))
                    worst = max(worst, *diffs)
                    print(f"seed {seed} {iou_type:4s} {backend:16s} AP {ours['AP']:6.3f} "
                          f"(lvis-api {100 * theirs['AP']:6.3f})  APr/c/f {ours['APr']:.3f} / "
                          f"{ours['APc']:.3f} / {ours['APf']:.3f}  largest difference "
                          f"{max(diffs):.2e} points  ({len(results)} detections)", flush=True)
    print(f"largest difference over all: {worst:.2e} percentage points")


if __name__ == "__main__":
    main()
