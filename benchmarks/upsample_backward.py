"""Bilinear upsampling, forward + backward: PyTorch's backward against segmentation/upsample.py's
matrix products, at the DeepLabV3+ quickstart's logits and at the GPU suite's DeepLabV3-R50.

Usage: python benchmarks/upsample_backward.py [--threads 2] [--device cpu|cuda] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.timing import time_interleaved  # noqa: E402
from resnet_detect.segmentation.upsample import _BilinearMatmulBackward  # noqa: E402

CASES = {"quickstart (8, 7, 36, 36) to 144x144": ((8, 7, 36, 36), (144, 144)),
         "GPU suite (16, 21, 64, 64) to 512x512": ((16, 21, 64, 64), (512, 512))}


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name, (shape, size) in CASES.items():
        x = torch.randn(*shape, device=device, requires_grad=True)
        grad = torch.randn(*shape[:2], *size, device=device)

        def pytorchs() -> None:
            out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            torch.autograd.grad(out, x, grad)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def products() -> None:
            torch.autograd.grad(_BilinearMatmulBackward.apply(x, size), x, grad)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        times = time_interleaved({"pytorch": pytorchs, "products": products}, args.repeats,
                                 inference=False)
        theirs, ours = (statistics.median(times[k]) for k in ("pytorch", "products"))
        print(f"{name}: PyTorch's backward {1000 * theirs:.1f} ms, matrix products "
              f"{1000 * ours:.1f} ms ({ours / theirs:.2f}x the time; median of "
              f"{args.repeats}, forward included)")


if __name__ == "__main__":
    main()
