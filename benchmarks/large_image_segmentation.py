"""Segmenting one large image with test.max_size: the class map through the averaged
probabilities at the image's size (before) against class by class (`TTAInference.class_map`).

Usage: python benchmarks/large_image_segmentation.py [--size 6000] [--max-size 2048]
           [--classes 21] [--threads 2]

The model is configs/synthetic/deeplabv3plus_R_18_os16.yaml with random weights and
`--classes` classes; the image is random, `--size` pixels square, scaled to `--max-size`
for the network and answered at its own size. Each way runs in a fresh process; printed:
seconds, peak RSS of the process and its growth over the model's, whether both gave the
same classes (the argmax of softmax probabilities against that of the logits: equal up to
rounding ties).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(way: str, size: int, max_size: int, classes: int, out: Path) -> None:
    import torch

    from resnet_detect.segmentation.build import build_model, load_config
    from resnet_detect.segmentation.inference import TTAInference
    cfg = load_config(ROOT / "configs/synthetic/deeplabv3plus_R_18_os16.yaml",
                      ["model.backbone.weights=null", f"model.num_classes={classes}"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    tta = TTAInference(max_size=max_size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with torch.no_grad():
        classes_map = (tta(model, image).argmax(dim=0) if way == "probabilities"
                       else tta.class_map(model, image))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(classes_map.to(torch.uint8), out)
    print(json.dumps({"way": way, "seconds": seconds, "peak_mb": peak,
                      "growth_mb": peak - before}))


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=6000)
    parser.add_argument("--max-size", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--way", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        import torch
        torch.set_num_threads(args.threads)
        measure(args.way, args.size, args.max_size, args.classes, Path(args.out))
        return
    import tempfile

    import torch
    with tempfile.TemporaryDirectory() as tmp:
        maps = []
        for way in ("probabilities", "class_map"):
            out = Path(tmp) / f"{way}.pt"
            result = subprocess.run(
                [sys.executable, __file__, "--way", way, "--out", str(out), "--size",
                 str(args.size), "--max-size", str(args.max_size), "--classes",
                 str(args.classes), "--threads", str(args.threads)],
                check=True, capture_output=True, text=True)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{way:14s} {row['seconds']:6.1f} s  peak RSS {row['peak_mb']:7.0f} MB "
                  f"(+{row['growth_mb']:.0f} MB over the model)")
            maps.append(torch.load(out))
        differing = int((maps[0] != maps[1]).sum())
        print(f"{args.size}x{args.size}, max_size {args.max_size}, {args.classes} classes: "
              f"{differing} of {maps[0].numel()} pixels differ")


if __name__ == "__main__":
    main()
