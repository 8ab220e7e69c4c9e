"""Faster R-CNN R50-FPN on CPU: ours against torchvision's fasterrcnn_resnet50_fpn, in one run.

Usage: python benchmarks/detection_speed.py [--repeats 5] [--train-repeats 3] [--threads N]
           [--score-thresh 0.015] [--eval-images 500] [--eval-repeats 3] [--skip PHASE ...]
           [--cache-host-memory]

Phases:
  inference  one 800x1067 synthetic scene (no resizing on either side), batch 1, eval mode,
             torch.inference_mode; seconds/image, and a check that both give the same
             detections (boxes, scores, labels).
  train      forward + backward + SGD step on a batch of two 800x1067 scenes with their
             gt boxes; seconds/step.
  eval       COCO box evaluation of synthetic detections (default 500 images, ~10 gt and
             100 detections each) by detection.evaluation with its pycocotools and its
             faster-coco-eval backend; seconds, and the largest difference of the 12 numbers.

Weights: torchvision's fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None), seeded,
its BatchNorm statistics and head weights randomised so that they matter (as in
tests/detection/test_torchvision_parity.py), imported into ours with
detection.load_detector_weights. The timed torchvision model is built the way
torchvision builds it whenever weights are given (FrozenBatchNorm2d, conv1 + layer1
frozen), i.e. the configuration of its COCO weights and of its training recipe, and the
one ours has (frozen_bn, freeze_at=2); ours' detections are also checked against the
weights=None model itself (nn.BatchNorm2d, eval mode). Random weights give class scores
near 1/91, below the usual 0.05 threshold, so the threshold is lowered on both sides alike
(--score-thresh): the default 0.015 leaves ~3k (RoI, class) candidates for NMS, about what
a trained model leaves at 0.05; at 0 all 90k are candidates and torchvision.ops'
per-class NMS loop takes a third of the time. Ours runs its CPU convolutions on
channels_last maps (resnet_detect/detection/rcnn.py, preprocess); torchvision's run NCHW, as it
ships.
Runs are timed alternately, round after round (benchmarks/timing.py); ratios are of
medians, torchvision's seconds over ours (> 1 means ours is faster).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn  # noqa: E402
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone  # noqa: E402

from resnet_detect.detection import build_model, load_detector_weights  # noqa: E402
from resnet_detect.detection.config import load_config  # noqa: E402
from resnet_detect.detection.evaluation import evaluate_coco  # noqa: E402
from tests.random_reference import (PROBE_SIZE, randomize_detector,  # noqa: E402
                                        spread_classes)
from resnet_detect.engine.data.synthetic_shapes import compose_scene  # noqa: E402
from resnet_detect.engine.host_memory import cache_host_memory  # noqa: E402
from timing import time_interleaved  # noqa: E402

CONFIG = ROOT / "configs" / "detection" / "faster_rcnn_R_50_FPN_1x.yaml"
SIZE = (800, 1067)  # (H, W): torchvision's test resize (800, max 1333) leaves it as it is


def scene(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A synthetic 800x1067 scene: uint8 (3, H, W) image, (M, 4) xyxy gt boxes, (M,) labels."""
    image, objects = compose_scene(np.random.default_rng(seed), *SIZE, min_objects=4,
                                   max_objects=10)
    boxes = []
    for obj in objects:
        ys, xs = np.nonzero(obj.visible)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return (torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor([obj.label for obj in objects], dtype=torch.int64))


def randomize_reference(tv: nn.Module, gen: torch.Generator) -> None:
    """Random weights that give varied detections, probed on a smooth image."""
    randomize_detector(tv, gen)
    tv.eval()
    low = torch.rand(1, 3, 10, 14, generator=gen)
    probe = F.interpolate(low, size=PROBE_SIZE, mode="bilinear", align_corners=False)[0]
    spread_classes(tv, probe, gen)


def build_models(score_thresh: float) -> dict[str, nn.Module]:
    """ours, torchvision (FrozenBatchNorm2d, trainable_layers=3), torchvision_bn (weights=None)."""
    torch.manual_seed(0)
    common = {"num_classes": 91, "box_score_thresh": score_thresh, "_skip_resize": True}
    tv_bn = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **common)
    randomize_reference(tv_bn, torch.Generator().manual_seed(1))
    tv = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                        trainable_layers=3), **common)
    tv.load_state_dict(tv_bn.state_dict())
    cfg = load_config(CONFIG, ["model.num_classes=90",
                               f"model.roi_heads.score_thresh={score_thresh}"])
    ours = build_model(cfg)
    load_detector_weights(ours, tv_bn.state_dict())
    return {"ours": ours, "torchvision": tv, "torchvision_bn": tv_bn}


def compare_detections(got: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, float]:
    """Ours (labels 0..89) against torchvision's (labels 1..90) detections of one image."""
    same = got["boxes"].shape == expected["boxes"].shape
    return {"count_ours": len(got["boxes"]), "count_torchvision": len(expected["boxes"]),
            "labels_equal": same and torch.equal(got["labels"] + 1, expected["labels"]),
            "max_box_diff": (got["boxes"] - expected["boxes"]).abs().max().item()
            if same and len(got["boxes"]) else math.nan,
            "max_score_diff": (got["scores"] - expected["scores"]).abs().max().item()
            if same and len(got["boxes"]) else math.nan}


def summarize(times: dict[str, list[float]], reference: str = "torchvision") -> dict[str, dict]:
    """Median and spread of seconds per run; ratio = reference median / run median."""
    medians = {n: statistics.median(t) for n, t in times.items()}
    return {n: {"median_s": medians[n], "min_s": min(t), "max_s": max(t),
                "ratio": medians[reference] / medians[n] if reference in medians else math.nan}
            for n, t in times.items()}


def print_rows(phase: str, unit: str, summary: dict[str, dict],
               reference: str = "torchvision") -> None:
    """One line per run: median, min, max, and the ratio to `reference`."""
    for name, r in summary.items():
        print(f"{phase:<10} {name:<16} {r['median_s']:8.3f} {unit}  (min {r['min_s']:.3f}, "
              f"max {r['max_s']:.3f})  {reference}/this {r['ratio']:.3f}")


def bench_inference(models: dict[str, nn.Module], repeats: int) -> dict[str, object]:
    """Seconds/image of ours and torchvision on one scene; ours' detections checked
    against both torchvision models."""
    image = scene(0)[0]
    for model in models.values():
        model.eval()
    runs: dict[str, Callable[[], list[dict[str, Tensor]]]] = {
        "ours": lambda: models["ours"]([image])}
    for name in ("torchvision", "torchvision_bn"):
        runs[name] = lambda m=models[name]: m([image.float() / 255.0])
    with torch.inference_mode():
        outputs = {name: run()[0] for name, run in runs.items()}
    checks = {name: compare_detections(outputs["ours"], outputs[name])
              for name in ("torchvision", "torchvision_bn")}
    del runs["torchvision_bn"]  # checked, not timed
    summary = summarize(time_interleaved(runs, repeats))
    print_rows("inference", "s/img ", summary)
    for name, c in checks.items():
        print(f"  ours vs {name:<15} detections {c['count_ours']}/{c['count_torchvision']}, "
              f"labels equal {c['labels_equal']}, max |box diff| {c['max_box_diff']:.2e} px, "
              f"max |score diff| {c['max_score_diff']:.2e}")
    return {"seconds": summary, "outputs": checks}


def train_step(model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]],
               optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Forward, backward and optimizer step on one batch; returns the losses."""
    losses = model(images, targets)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {k: v.item() for k, v in losses.items()}


def bench_train(models: dict[str, nn.Module], repeats: int, lr: float) -> dict[str, object]:
    """Seconds/step of ours and torchvision (same trainable parameters, SGD) on two scenes."""
    samples = [scene(seed) for seed in (1, 2)]
    images = [image for image, _, _ in samples]
    ours_targets = [{"gt_boxes": b, "gt_classes": c} for _, b, c in samples]
    tv_targets = [{"boxes": b, "labels": c + 1} for _, b, c in samples]
    ours, tv = models["ours"].train(), models["torchvision"].train()
    optimizers = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=lr,
                                        momentum=0.9, weight_decay=1e-4)
                  for name, m in (("ours", ours), ("torchvision", tv))}
    last: dict[str, dict[str, float]] = {}

    def run(name: str) -> None:
        if name == "ours":
            last[name] = train_step(ours, images, ours_targets, optimizers[name])
        else:
            last[name] = train_step(tv, [im.float() / 255.0 for im in images], tv_targets,
                                    optimizers[name])

    summary = summarize(time_interleaved({n: (lambda n=n: run(n)) for n in optimizers},
                                         repeats, inference=False))
    print_rows("train", "s/step", summary)
    trainable = {n: sum(p.numel() for p in m.parameters() if p.requires_grad)
                 for n, m in (("ours", ours), ("torchvision", tv))}
    print(f"  batch 2 x {SIZE[0]}x{SIZE[1]}, {[len(b) for _, b, _ in samples]} gt boxes, "
          f"trainable parameters ours {trainable['ours']:,} torchvision "
          f"{trainable['torchvision']:,}; last-step total loss ours "
          f"{sum(last['ours'].values()):.4f} torchvision {sum(last['torchvision'].values()):.4f}")
    return {"seconds": summary, "trainable_parameters": trainable, "last_losses": last}


def synthetic_coco(num_images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """COCO gt (80 categories with COCO's ids, ~10 objects per image of all sizes) and
    100 detections per image: jittered copies of the objects (sometimes the wrong class)
    and random boxes, with scores that favour the better ones."""
    rng = np.random.default_rng(seed)
    cat_ids = [i for i in range(1, 91) if i not in
               (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = 640, 480
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": width,
                       "height": height})
        num_gt = int(rng.integers(5, 16))
        wh = np.exp(rng.uniform(np.log(8), np.log(400), size=(num_gt, 2)))
        xy = rng.uniform(0, 1, size=(num_gt, 2)) * (np.array([width, height]) - wh).clip(1)
        cats = rng.choice(cat_ids, size=num_gt)
        for (x, y), (w, h), c in zip(xy, wh, cats):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(c), "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": int(rng.random() < 0.02)})
        for _ in range(100):
            if rng.random() < 0.6:
                k = int(rng.integers(num_gt))
                jitter = rng.normal(0, 0.15, size=4) * np.r_[wh[k], wh[k]]
                x, y = xy[k] + jitter[:2]
                w, h = np.maximum(wh[k] + jitter[2:], 1.0)
                c = int(cats[k]) if rng.random() < 0.8 else int(rng.choice(cat_ids))
                score = rng.uniform(0.3, 1.0)
            else:
                w, h = np.exp(rng.uniform(np.log(8), np.log(400), size=2))
                x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
                c, score = int(rng.choice(cat_ids)), rng.uniform(0.0, 0.6)
            results.append({"image_id": image_id, "category_id": c,
                            "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                            "score": round(float(score), 4)})
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": c, "name": f"class_{c}"} for c in cat_ids]}
    return gt, results


def bench_eval(num_images: int, repeats: int) -> dict[str, object]:
    """Seconds of `evaluate_coco` with each backend on the same synthetic gt and results."""
    gt, results = synthetic_coco(num_images)
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = Path(tmp) / "gt.json"
        ann_file.write_text(json.dumps(gt), encoding="utf-8")
        stats: dict[str, list[float]] = {}

        def run(backend: str) -> None:
            stats[backend] = evaluate_coco(ann_file, results, backend=backend,
                                           verbose=False)["stats"]

        runs = {b: (lambda b=b: run(b)) for b in ("pycocotools", "faster_coco_eval")}
        summary = summarize(time_interleaved(runs, repeats, inference=False),
                            reference="pycocotools")
    diff = max(abs(a - b) for a, b in zip(stats["pycocotools"], stats["faster_coco_eval"]))
    print_rows("coco_eval", "s     ", summary, reference="pycocotools")
    print(f"  {num_images} images, {len(gt['annotations'])} gt, {len(results)} detections; "
          f"AP {stats['pycocotools'][0]:.4f}; max |difference| of the 12 numbers {diff:.2e}")
    return {"seconds": summary, "max_stats_diff": diff, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed inference rounds")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed training steps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--score-thresh", type=float, default=0.015,
                        help="box score threshold of both models (usual: 0.05)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (train)")
    parser.add_argument("--eval-images", type=int, default=500)
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=("inference", "train", "eval"))
    parser.add_argument("--cache-host-memory", action="store_true",
                        help="keep freed memory for reuse, as the training tools do on a CPU "
                             "(resnet_detect/engine/host_memory.py); applies to both models")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cache_host_memory and not cache_host_memory():
        raise SystemExit("--cache-host-memory: not a glibc system")
    load_before = os.getloadavg()
    print(f"box score threshold {args.score_thresh} on both sides (usual 0.05; random weights "
          "score ~1/91); "
          f"threads {torch.get_num_threads()}; load average {load_before[0]:.2f}")
    results: dict[str, object] = {}
    if not {"inference", "train"} <= set(args.skip):
        models = build_models(args.score_thresh)
        if "inference" not in args.skip:
            results["inference"] = bench_inference(models, args.repeats)
        if "train" not in args.skip:
            results["train"] = bench_train(models, args.train_repeats, args.lr)
    if "eval" not in args.skip:
        results["eval"] = bench_eval(args.eval_images, args.eval_repeats)
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    results["setup"] = {"size": SIZE, "repeats": args.repeats,
                        "train_repeats": args.train_repeats, "eval_repeats": args.eval_repeats,
                        "score_thresh": args.score_thresh, "threads": torch.get_num_threads(),
                        "cache_host_memory": args.cache_host_memory,
                        "torch": torch.__version__, "cpus": os.cpu_count(),
                        "load_before": load_before, "load_after": load_after,
                        "machine": platform.processor() or platform.machine()}
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    main()
