"""Sliced detection (`test.tiles`) on large images with small objects: box AP and seconds per
image of a trained detector with and without tiles.

The large images are mosaics of synthetic scenes (tools/make_synthetic.py's generator, scenes
of `--scene` pixels square, seed `--seed`, unseen by a quickstart trained on seed 0): `--grid`
x `--grid` scenes per image, their COCO annotations shifted with them. At the quickstart's
test resize (short edge 320) a 4 x 4 mosaic of 320 px scenes is shrunk 4 times; 320 px tiles
reach the network at the scale the detector was trained at.

Each setting is scored by `evaluate_checkpoint` (what tools/eval.py runs; its command line is
printed) and timed by a `Predictor` on the first `--time-images` mosaics, the settings taking
turns (benchmarks/timing.py). Printed: a Markdown table.

Usage:
  python benchmarks/large_image_tiles.py --weights RUN/model_final.pth [--config RUN/config.yaml]
      [--grid 4] [--scene 320] [--images 9] [--tile 320] [--out /tmp/large_image_tiles]
      [--time-images 3] [--repeats 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_mosaics(out: Path, grid: int, scene: int, images: int, seed: int) -> Path:
    """out/mosaic/{images/*.png, val.json}: `images` mosaics of grid x grid scenes."""
    from resnet_detect.engine.data.synthetic import generate

    scenes = out / "scenes"
    generate(scenes, seed=seed, num_train=1, num_val=grid * grid * images, size=(scene, scene),
             cls_train_per_class=1, cls_val_per_class=1)
    source = json.loads((scenes / "coco/val.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in source["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    folder = out / "mosaic/images"
    folder.mkdir(parents=True, exist_ok=True)
    mosaic_images, annotations = [], []
    infos = sorted(source["images"], key=lambda info: info["id"])
    for m in range(images):
        canvas = np.zeros((grid * scene, grid * scene, 3), np.uint8)
        for k, info in enumerate(infos[m * grid * grid:(m + 1) * grid * grid]):
            y, x = (k // grid) * scene, (k % grid) * scene
            canvas[y:y + scene, x:x + scene] = cv2.imread(
                str(scenes / "images/val" / info["file_name"]))
            for ann in by_image.get(info["id"], []):
                bx, by, bw, bh = ann["bbox"]
                annotations.append({
                    **ann, "id": len(annotations) + 1, "image_id": m + 1,
                    "bbox": [bx + x, by + y, bw, bh],
                    "segmentation": [[v + (x if i % 2 == 0 else y) for i, v in enumerate(poly)]
                                     for poly in ann["segmentation"]]})
        name = f"{m:04d}.png"  # lossless: the scenes' own pixels
        cv2.imwrite(str(folder / name), canvas)
        mosaic_images.append({"id": m + 1, "file_name": name, "height": grid * scene,
                              "width": grid * scene})
    ann_file = out / "mosaic/val.json"
    ann_file.write_text(json.dumps({"images": mosaic_images, "annotations": annotations,
                                    "categories": source["categories"]}))
    return ann_file


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--config", help="default: config.yaml beside the weights")
    parser.add_argument("--grid", type=int, default=4)
    parser.add_argument("--scene", type=int, default=320)
    parser.add_argument("--images", type=int, default=9)
    parser.add_argument("--tile", type=int, default=320)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="/tmp/large_image_tiles")
    parser.add_argument("--time-images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from timing import time_interleaved
    from resnet_detect.detection import Predictor
    from resnet_detect.detection.training import evaluate_checkpoint

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    config = args.config or str(Path(args.weights).parent / "config.yaml")
    ann_file = build_mosaics(out, args.grid, args.scene, args.images, args.seed)
    side = args.grid * args.scene
    data = [f"data.val.ann_file={ann_file}", f"data.val.img_dir={ann_file.parent / 'images'}",
            "data.num_workers=0"]
    tiles = [f"test.tiles.size=[{args.tile},{args.tile}]", "test.tiles.overlap=0.2"]
    settings = {
        "no tiles (test resize)": [],
        f"no tiles, whole image at {side} px": [f"data.val.min_size={side}",
                                               f"data.val.max_size={side}"],
        f"tiles {args.tile}, overlap 0.2, + whole image": tiles,
        f"tiles {args.tile}, overlap 0.2, tiles only": [*tiles, "test.tiles.full_image=false"],
        f"tiles {args.tile}, overlap 0.2, + whole image, merged by intersection over the "
        "smaller box 0.5": [*tiles, "test.tiles.match_metric=ios", "test.tiles.nms_thresh=0.5"],
    }
    rows = {}
    for k, (name, overrides) in enumerate(settings.items()):
        output = out / f"eval_{k}"
        print(f"python tools/eval.py {config} --weights {args.weights} --output {output} "
              f"{' '.join(data + overrides)}", flush=True)
        metrics = evaluate_checkpoint(config, args.weights, output, [*data, *overrides],
                                      torch.device("cpu"))
        rows[name] = metrics["bbox"]
    infos = json.loads(ann_file.read_text())["images"][:args.time_images]
    pictures = [np.ascontiguousarray(cv2.imread(str(ann_file.parent / "images" /
                                                    info["file_name"]))[..., ::-1])
                for info in infos]
    predictors = {name: Predictor(config, weights=args.weights, overrides=[*data, *overrides])
                  for name, overrides in settings.items()}
    runs = {name: (lambda p=p: [p(picture) for picture in pictures])
            for name, p in predictors.items()}
    times = time_interleaved(runs, args.repeats)
    objects = len(json.loads(ann_file.read_text())["annotations"])
    print(f"\n{args.images} images of {side} x {side} px ({args.grid} x {args.grid} scenes of "
          f"{args.scene} px), {objects} objects; s/image: median of {args.repeats} rounds over "
          f"{len(pictures)} images, {args.threads} threads\n")
    print("| setting | box AP | AP50 | AP75 | APs | APm | APl | s/image |")
    print("|---|---|---|---|---|---|---|---|")
    for name, bbox in rows.items():
        seconds = float(np.median(times[name])) / len(pictures)
        print(f"| {name} | " + " | ".join(f"{bbox[key]:.1f}" for key in
                                         ("AP", "AP50", "AP75", "APs", "APm", "APl"))
              + f" | {seconds:.2f} |")


if __name__ == "__main__":
    main()
