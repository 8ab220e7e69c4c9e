"""The box head's post-processing at low score thresholds: ours against torchvision's.

Usage: python benchmarks/box_postprocess.py [--classes 1203] [--rois 1000]
           [--score-thresh 0.0001] [--detections 300] [--spread 1.0] [--repeats 3] [--threads 1]

Both turn the same (R, K+1) logits, (R, 4K) deltas and R proposals of one 1000x1000 image
into detections: softmax, per-class decode, clip, score threshold, small-box removal,
per-class NMS (IoU 0.5), the best `--detections`. Ours is FastRCNNOutputs.inference (NMS on
a growing prefix of the candidates, resnet_detect/detection/nms.py); torchvision's is
RoIHeads.postprocess_detections (NMS over every candidate). The logits are those of a
trained model in shape, not in value: Gaussian noise times `--spread`, one class per RoI
raised by 6; a larger spread leaves fewer candidates above a threshold. LVIS's test setting
(detectron2's LVIS configs) is 1203 classes, threshold 0.0001, 300 detections; COCO's
0.05 and 100, or 0.001 for evaluation.
Prints seconds per image (medians of interleaved rounds, benchmarks/timing.py), the
candidate count, and whether both gave the same detections.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torchvision.models.detection.roi_heads import RoIHeads

from timing import time_interleaved
from resnet_detect.detection.box_coder import BoxCoder
from resnet_detect.detection.roi_heads.fast_rcnn import FastRCNNOutputs

IMAGE_SIZE = (1000, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--rois", type=int, default=1000)
    parser.add_argument("--score-thresh", type=float, default=0.0001)
    parser.add_argument("--detections", type=int, default=300)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    classes, rois = args.classes, args.rois
    logits = torch.randn(rois, classes + 1, generator=generator) * args.spread
    logits[torch.arange(rois), torch.randint(0, classes + 1, (rois,), generator=generator)] += 6
    deltas = torch.randn(rois, 4 * classes, generator=generator) * 0.1
    corner = torch.rand(rois, 2, generator=generator) * 700
    proposals = torch.cat([corner, corner + torch.rand(rois, 2, generator=generator) * 300 + 10], 1)

    ours = FastRCNNOutputs(in_channels=1, num_classes=classes,
                           box_coder=BoxCoder((10., 10., 5., 5.)),
                           score_thresh=args.score_thresh, detections_per_image=args.detections)
    # torchvision's logits put background first
    theirs_logits = torch.cat([logits[:, -1:], logits[:, :-1]], 1)
    theirs_deltas = torch.cat([torch.zeros(rois, 4), deltas], 1)
    theirs = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, (10., 10., 5., 5.),
                      args.score_thresh, 0.5, args.detections)
    runs = {
        "ours": lambda: ours.inference(logits, deltas, [proposals], [IMAGE_SIZE]),
        "torchvision": lambda: theirs.postprocess_detections(
            theirs_logits, theirs_deltas, [proposals], [IMAGE_SIZE]),
    }
    times = time_interleaved(runs, args.repeats)
    with torch.inference_mode():
        mine = ours.inference(logits, deltas, [proposals], [IMAGE_SIZE])[0]
        boxes, scores, labels = (t[0] for t in theirs.postprocess_detections(
            theirs_logits, theirs_deltas, [proposals], [IMAGE_SIZE]))
    same = (mine["labels"].shape == labels.shape and torch.equal(mine["labels"] + 1, labels)
            and torch.equal(mine["boxes"], boxes))
    # torchvision's softmax sums its columns in another order: scores may differ in the last bit
    score_difference = (mine["scores"] - scores).abs().max().item() if same else float("nan")
    candidates = int((logits.softmax(-1)[:, :classes] > args.score_thresh).sum())
    print(f"{classes} classes, {rois} RoIs, threshold {args.score_thresh}, spread {args.spread}: "
          f"{candidates} candidates, {len(scores)} detections; labels and boxes equal: {same}, "
          f"largest score difference {score_difference:.1e}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in medians.items():
        print(f"  {name:12s} {seconds * 1000:9.1f} ms/image")
    print(f"  torchvision / ours: {medians['torchvision'] / medians['ours']:.1f}x")


if __name__ == "__main__":
    main()
