"""RoIAlign forward + backward on CPU: torchvision's op against detection.roi_align, one run.

Usage: python benchmarks/roi_align_backward.py [--repeats 10] [--threads N]

Cases sized like the CPU quickstart's poolers (batch of 8 scenes at ~320x427, stride 8, 128
channels): the box pooler (1024 RoIs, 7x7) and the mask pooler (128 RoIs, 14x14), both with
sampling ratio 2, random boxes of 8-160 px. The two take turns, repeat after repeat. Prints
median milliseconds, the speed ratio (> 1: ours faster) and the largest gradient difference.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torchvision.ops import roi_align as tv_roi_align  # noqa: E402

from resnet_detect.detection.roi_align import roi_align  # noqa: E402
from timing import time_interleaved  # noqa: E402

CASES = {"box pooler": (1024, 7), "mask pooler": (128, 14)}


def make_case(num_rois: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n, c, h, w, stride = 8, 128, 40, 54, 8
    features = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    centre = torch.rand(num_rois, 2, generator=g) * torch.tensor([w, h]) * stride
    size = 8 + torch.rand(num_rois, 2, generator=g) * 152
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    batch = torch.randint(0, n, (num_rois, 1), generator=g).float()
    return features, torch.cat([batch, boxes], dim=1)


def forward_backward(op: Callable[..., torch.Tensor], features: torch.Tensor,
                     rois: torch.Tensor, side: int) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        x = features.detach().requires_grad_()
        op(x, rois, (side, side), 1 / 8, 2, False).sum().backward()
        return x.grad
    return run


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "repeats": args.repeats}
    for name, (num_rois, side) in CASES.items():
        features, rois = make_case(num_rois)
        runs = {"torchvision": forward_backward(tv_roi_align, features, rois, side),
                "ours": forward_backward(roi_align, features, rois, side)}
        grad_diff = (runs["torchvision"]() - runs["ours"]()).abs().max().item()
        times = time_interleaved(runs, args.repeats, inference=False)
        ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
        report[name] = {"rois": num_rois, "output": side,
                        "ms": {k: round(v, 1) for k, v in ms.items()},
                        "speedup": round(ms["torchvision"] / ms["ours"], 2),
                        "max_grad_diff": grad_diff}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
