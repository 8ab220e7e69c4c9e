"""The Mask R-CNN mask head with many classes: every class's 28x28 map (the 1x1 conv over all
K, then each RoI's channel picked, as torchvision and detectron2 do) against the RoI's class
alone (MaskRCNNHead.forward).

Usage: python benchmarks/mask_head_classes.py [--classes 80 1203] [--detections 300]
           [--positives 256] [--repeats 5] [--threads 2]

The standard FPN head (four 3x3 convs of 256, a 2x deconvolution, the 1x1 predictor) with
random weights, on random (R, 256, 14, 14) pooled features: inference of `--detections`
RoIs (LVIS's 300 per image), and a training step (forward, loss, backward) of `--positives`
RoIs (two images' 512 sampled RoIs at a quarter positive). Prints, per class count, the
median seconds of each way (interleaved rounds, benchmarks/timing.py), the size of the
(R, K, 28, 28) float32 logits the all-class way makes, and the largest difference between
the two ways' logits.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import time_interleaved  # noqa: E402

from resnet_detect.detection.roi_heads import MaskRCNNHead  # noqa: E402


def all_classes(head: MaskRCNNHead, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The (R, K, M, M) way: the 1x1 conv over every class, then each RoI's channel."""
    for i in range(1, head.num_conv + 1):
        x = F.relu(getattr(head, f"mask_fcn{i}")(x))
    logits = head.predictor(F.relu(head.deconv(x)))
    return logits[torch.arange(len(classes)), classes]


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[80, 1203])
    parser.add_argument("--detections", type=int, default=300)
    parser.add_argument("--positives", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    for k in args.classes:
        torch.manual_seed(0)
        head = MaskRCNNHead(in_channels=256, num_classes=k)
        for name, rois in (("inference", args.detections), ("training", args.positives)):
            x = torch.randn(rois, 256, 14, 14)
            classes = torch.randint(0, k, (rois,))
            targets = (torch.rand(rois, 28, 28) > 0.5).float()
            with torch.no_grad():
                difference = (head(x, classes) - all_classes(head, x, classes)).abs().max()

            def step(way: object) -> None:
                if name == "inference":
                    way(head, x, classes)
                    return
                head.zero_grad(set_to_none=True)
                head.losses(way(head, x, classes), targets)["loss_mask"].backward()

            times = time_interleaved(
                {"all classes": lambda: step(all_classes),
                 "own class": lambda: step(lambda h, f, c: h(f, c))},
                args.repeats, inference=name == "inference")
            before, after = (statistics.median(times[w]) for w in ("all classes", "own class"))
            print(f"K={k:5d} {name:9s} R={rois:4d}: all classes {before:.3f} s "
                  f"((R, K, 28, 28) logits {rois * k * 28 * 28 * 4 / 2**20:.0f} MB), own class "
                  f"{after:.3f} s ({after / before:.2f}x); largest logit difference "
                  f"{difference:.1e}", flush=True)


if __name__ == "__main__":
    main()
